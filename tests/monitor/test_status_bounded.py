"""nova status reads metrics.jsonl from its end, a bounded amount, whatever the file's size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monitor_support import make_run

from nova.monitor.status import read_status
from nova.runs import jsonl
from nova.runs.jsonl import read_jsonl_tail


def test_the_tail_is_whole_lines_only(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps({"step": i, "pad": "x" * 20}) + "\n" for i in range(100)))
    records, cut = read_jsonl_tail(path, max_bytes=200)
    assert cut and records and records[-1]["step"] == 99
    assert [r["step"] for r in records] == list(range(records[0]["step"], 100))  # the cut first line is dropped
    assert read_jsonl_tail(path)[0] == jsonl.read_jsonl(path) and not read_jsonl_tail(path)[1]


def test_status_of_a_huge_metrics_file_reads_only_its_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = make_run(tmp_path / "run", last_step=120)
    newest = (run / "metrics.jsonl").read_bytes()
    with (run / "metrics.jsonl").open("r+b") as fh:  # 64 MiB of old lines (a sparse hole, cheap to make) first
        fh.truncate(0)
        fh.write(b'{"stage": "sft", "step": 1}\n')
        fh.seek(64 * 1024 * 1024)
        fh.write(b"\n" + newest)
    read_whole = jsonl.read_jsonl_counted

    def refuse(path: Path) -> tuple[list, int]:
        assert Path(path).name != "metrics.jsonl", "status read metrics.jsonl whole"
        return read_whole(path)

    monkeypatch.setattr(jsonl, "read_jsonl_counted", refuse)
    phase = read_status(run).phases[0]
    assert phase.step == 120 and phase.stage == "sft"
