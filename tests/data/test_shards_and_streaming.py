"""Tokenization in shards (a killed run resumes from the finished ones) and data.streaming (data read,
checked and tokenized one batch at a time, with the counts and rows of the in-memory path)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import data_fixtures
from data_fixtures import chat, data_cfg, write_jsonl
from nova.config.data_schema import DataConfig, DatasetSpec
from nova.data import check_data, data_key, prepare_stage_data
from nova.data import tokens as tokens_module

tok = data_fixtures.tok  # the shared tokenizer fixture


def _rows(n: int, *, bad_every: int = 0, dup_every: int = 0, long_every: int = 0) -> list[Any]:
    """Chats of varied length, with bad records, duplicates and over-long chats mixed in."""
    out: list[Any] = []
    for i in range(n):
        if bad_every and i % bad_every == 3:
            out.append({"messages": [{"role": "user", "content": f"no answer {i}"}]})
        elif dup_every and i % dup_every == 5:
            out.append(chat("duplicate question", "duplicate answer"))
        elif long_every and i % long_every == 7:
            out.append(chat(f"long {i}", "word " * 400))
        else:
            out.append(chat(f"question {i} " + "x " * (i % 17), f"answer {i} " + "y " * (i % 23)))
    return out


def _columns(ds: Any) -> dict[str, list[Any]]:
    return {c: ds[c] for c in sorted(ds.column_names)} if ds is not None else {}


def _report(prepared: Any) -> dict[str, Any]:
    report = prepared.report.to_dict()
    for key in ("cache", "notes"):
        report.pop(key, None)
    report["problems"] = sorted(report["problems"])  # streaming reads eval_datasets first
    return report


def _interrupt_after(shards: int, cfg: DataConfig, tok: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tokenize ``cfg`` and stop it with the user's Ctrl-C (KeyboardInterrupt) once ``shards`` shards are sealed."""
    close = tokens_module.SideTokenizer._close_shard
    closed: list[int] = []

    def stop(self: Any) -> None:
        if len(closed) == shards:
            raise KeyboardInterrupt
        close(self)
        closed.append(1)

    monkeypatch.setattr(tokens_module.SideTokenizer, "_close_shard", stop)
    with pytest.raises(KeyboardInterrupt):
        prepare_stage_data(cfg, tok, method="sft", seed=1)
    monkeypatch.setattr(tokens_module.SideTokenizer, "_close_shard", close)


def test_a_tokenization_stopped_midway_resumes_from_its_finished_shards(tmp_path: Path, tok: Any,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", _rows(1050, bad_every=97, dup_every=101, long_every=89))
    clean = prepare_stage_data(data_cfg(data, cache_dir=str(tmp_path / "clean"), on_error="skip", max_length=128,
                                        shard_records=100, eval_split=0.1), tok, method="sft", seed=1)
    cfg = data_cfg(data, cache_dir=str(tmp_path / "c"), on_error="skip", max_length=128, shard_records=100,
                   eval_split=0.1)
    _interrupt_after(4, cfg, tok, monkeypatch)
    partial = list((tmp_path / "c" / "data").glob("*.partial"))
    assert len(partial) == 1 and len(list(partial[0].glob("train-*.json"))) == 4
    assert not list(partial[0].glob(".*tmp*")), "the interrupted shard's temporary file is removed"

    encoded: list[int] = []
    prepare = tokens_module.Encoder.prepare
    monkeypatch.setattr(tokens_module.Encoder, "prepare", lambda self, ex: encoded.append(len(ex)) or prepare(self, ex))
    resumed = prepare_stage_data(cfg, tok, method="sft", seed=1)
    train_examples = clean.report.train_records  # one row per chat here
    assert sum(encoded) == (resumed.report.read - resumed.report.problem_count - resumed.report.deduplicated) - 400
    assert any("tokenization resumed: 4 of" in n for n in resumed.report.notes)
    assert _report(resumed) == _report(clean)
    assert _columns(resumed.train) == _columns(clean.train) and len(resumed.train) == train_examples
    assert _columns(resumed.eval) == _columns(clean.eval)
    assert not list((tmp_path / "c" / "data").glob("*.partial")), "the sealed entry replaced the partial one"
    hit = prepare_stage_data(cfg, tok, method="sft", seed=1)
    assert hit.report.cache.startswith("hit") and _columns(hit.train) == _columns(clean.train)


def test_a_damaged_shard_is_tokenized_again(tmp_path: Path, tok: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", _rows(300))
    cfg = data_cfg(data, tmp=tmp_path, shard_records=100)
    _interrupt_after(2, cfg, tok, monkeypatch)
    partial = next((tmp_path / "cache" / "data").glob("*.partial"))
    with (partial / "train-00001.arrow").open("ab") as fh:
        fh.write(b"junk")  # a disk that lost the end of the file: its size no longer matches its bookkeeping
    resumed = prepare_stage_data(cfg, tok, method="sft", seed=1)
    assert any("resumed: 1 of 3" in n for n in resumed.report.notes)
    clean = prepare_stage_data(data_cfg(data, cache_dir=str(tmp_path / "other")), tok, method="sft", seed=1)
    assert _columns(resumed.train) == _columns(clean.train)


_KILLED = """
import sys
from transformers import AutoTokenizer
from nova.config.data_schema import DataConfig, DatasetSpec
from nova.data import prepare_stage_data
tok = AutoTokenizer.from_pretrained(sys.argv[1], local_files_only=True)
cfg = DataConfig(datasets=[DatasetSpec(path=sys.argv[2])], cache_dir=sys.argv[3], eval_split=0.0, shard_records=500)
prepare_stage_data(cfg, tok, method="sft", seed=1)
"""


def test_sigkill_during_tokenization_then_the_rest_only(tmp_path: Path, tok: Any, tiny_model_dir: Path) -> None:
    """A real kill -9 between shards: the next start keeps every finished shard and the result is the same."""
    data = write_jsonl(tmp_path / "d.jsonl", _rows(6000))
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED, str(tiny_model_dir), str(data), str(cache)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((cache / "data").glob("*.partial/train-*.json"))) < 3:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(list((cache / "data").glob("*.partial/train-*.json")))
    assert 3 <= finished < 12, "killed midway"
    cfg = DataConfig(datasets=[DatasetSpec(path=str(data))], cache_dir=str(cache), eval_split=0.0, shard_records=500)
    resumed = prepare_stage_data(cfg, tok, method="sft", seed=1)
    assert any(f"resumed: {finished} of 12" in n for n in resumed.report.notes), resumed.report.notes
    clean = prepare_stage_data(cfg.model_copy(update={"cache_dir": str(tmp_path / "clean")}), tok, method="sft",
                               seed=1)
    assert resumed.report.tokens == clean.report.tokens
    assert resumed.train["input_ids"] == clean.train["input_ids"]
    assert resumed.train["labels"] == clean.train["labels"]


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_streaming_gives_the_rows_and_counts_of_the_in_memory_path(tmp_path: Path, tok: Any, method: str) -> None:
    if method == "sft":
        rows = _rows(700, bad_every=61, dup_every=43, long_every=57)
    else:
        rows = [{"prompt": f"q {i} " + "z " * (i % 11), "chosen": f"good {i % 300}", "rejected": f"bad {i}"}
                for i in range(600)] + [{"prompt": "only a prompt"}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    held = write_jsonl(tmp_path / "e.jsonl", rows[:40:3] + rows[650:660])  # some of it is also in the training data
    spec = DatasetSpec(path=str(data), max_samples=550)
    common: dict[str, Any] = {"on_error": "skip", "max_length": 96, "shard_records": 100, "eval_split": 0.0,
                              "eval_datasets": [DatasetSpec(path=str(held))]}
    memory = prepare_stage_data(data_cfg(spec, cache_dir=str(tmp_path / "m"), **common), tok, method=method, seed=3)
    streamed = prepare_stage_data(data_cfg(spec, cache_dir=str(tmp_path / "s"), streaming=True,
                                           stream_buffer_mb=8, **common), tok, method=method, seed=3)
    a, b = _report(memory), _report(streamed)
    assert a == b
    assert a["leakage_removed"] > 0 and a["over_max_samples"] > 0 and a["problem_count"] > 0
    assert _columns(memory.train) == _columns(streamed.train)
    assert _columns(memory.eval) == _columns(streamed.eval)
    checked = check_data(data_cfg(spec, streaming=True, **common), method=method, tokenizer=tok, seed=3)
    assert checked.train_records == memory.report.train_records and checked.tokens == memory.report.tokens


def test_streaming_holdout_is_each_records_own_seeded_choice(tmp_path: Path, tok: Any) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", _rows(1000))
    cfg = data_cfg(data, tmp=tmp_path, streaming=True, eval_split=0.2)
    first = prepare_stage_data(cfg, tok, method="sft", seed=5)
    assert 150 <= first.report.eval_records <= 250 and first.report.train_records + first.report.eval_records == 1000
    assert "streaming" in first.report.split and str(first.report.eval_records) in first.report.split
    again = prepare_stage_data(cfg.model_copy(update={"cache_dir": str(tmp_path / "again")}), tok, method="sft", seed=5)
    assert _columns(again.eval) == _columns(first.eval)
    other = prepare_stage_data(cfg.model_copy(update={"cache_dir": str(tmp_path / "o")}), tok, method="sft", seed=6)
    assert other.eval is not None and 150 <= len(other.eval) <= 250
    assert _columns(other.eval) != _columns(first.eval), "another seed holds out other records"
    # a record's side depends on itself and the seed only: the same records, behind 500 others, are held out again
    mixed = write_jsonl(tmp_path / "m.jsonl", [chat(f"other {i}", f"reply {i}") for i in range(500)] + _rows(1000))
    more = prepare_stage_data(data_cfg(mixed, tmp=tmp_path / "m", streaming=True, eval_split=0.2), tok, method="sft",
                              seed=5)
    held = {tuple(ids) for ids in first.eval["input_ids"]}
    assert held <= {tuple(ids) for ids in more.eval["input_ids"]}


def test_streaming_that_holds_out_every_record_says_so(tmp_path: Path, tok: Any) -> None:
    from nova.errors import DataError

    data = write_jsonl(tmp_path / "d.jsonl", _rows(3))
    with pytest.raises(DataError) as err:
        prepare_stage_data(data_cfg(data, tmp=tmp_path, streaming=True, eval_split=0.99), tok, method="sft", seed=1)
    assert "held out every usable record (3)" in str(err.value) and "eval_split: 0" in err.value.problems[0].hint
    with pytest.raises(DataError, match=r"held out every usable record \(3\)"):
        check_data(data_cfg(data, streaming=True, eval_split=0.99), method="sft")


def test_streaming_without_a_tokenizer_reads_and_counts(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", _rows(300, bad_every=50, dup_every=70))
    common = {"on_error": "skip", "eval_split": 0.1}
    memory = check_data(data_cfg(data, **common), method="sft")
    streamed = check_data(data_cfg(data, streaming=True, **common), method="sft")
    assert (streamed.read, dict(streamed.skipped), streamed.deduplicated) == (
        memory.read, dict(memory.skipped), memory.deduplicated)
    assert streamed.train_records + streamed.eval_records == memory.train_records + memory.eval_records


def test_streaming_under_on_error_fail_lists_every_problem(tmp_path: Path, tok: Any) -> None:
    from nova.errors import DataError

    data = write_jsonl(tmp_path / "d.jsonl", _rows(400, bad_every=100))
    with pytest.raises(DataError) as err:
        prepare_stage_data(data_cfg(data, tmp=tmp_path, streaming=True), tok, method="sft", seed=1)
    assert len(err.value.problems) == 4 and all("d.jsonl:" in p.where for p in err.value.problems)


def test_streaming_says_its_counts_as_they_are_reached(tmp_path: Path, tok: Any, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from nova.data import stream

    monkeypatch.setattr(stream, "_SAY_EVERY", 0.0)
    data = write_jsonl(tmp_path / "d.jsonl", _rows(50))
    prepare_stage_data(data_cfg(data, tmp=tmp_path, streaming=True), tok, method="sft", seed=1)
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("streaming: ")]
    counts = [int(line.split()[1]) for line in said if "records read" in line]
    assert counts[:3] == [1, 2, 3] and counts[-1] == 50


@pytest.mark.parametrize(("setting", "word"), [({"max_samples": 10}, "max_samples"),
                                               ({"reasoning_ratio": 0.5}, "reasoning_ratio")])
def test_streaming_refuses_what_resamples_the_whole_set(tmp_path: Path, setting: dict[str, Any], word: str) -> None:
    from pydantic import ValidationError

    data = write_jsonl(tmp_path / "d.jsonl", _rows(5))
    with pytest.raises(ValidationError, match=rf"{word}.*streaming"):
        DataConfig(datasets=[DatasetSpec(path=str(data))], streaming=True, **setting)
    with pytest.raises(ValidationError, match=r"weight.*streaming"):
        DataConfig(datasets=[DatasetSpec(path=str(data), weight=2.0)], streaming=True)
    with pytest.raises(ValidationError, match="hub dataset"):
        DataConfig(datasets=[DatasetSpec(path="someone/some-data")], streaming=True)


def test_the_fingerprint_covers_streamed_data(tmp_path: Path, tok: Any) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", _rows(20))
    streamed = data_cfg(data, tmp=tmp_path, streaming=True)
    key = data_key(streamed, tok, method="sft", seed=1)
    assert key != data_key(data_cfg(data, tmp=tmp_path), tok, method="sft", seed=1), "the split differs"
    assert key == data_key(streamed.model_copy(update={"stream_buffer_mb": 64, "shard_records": 500}), tok,
                           method="sft", seed=1), "buffer and shard sizes do not change the data"
    write_jsonl(data, [*_rows(19), chat("question 19", "a changed answer")])
    assert data_key(streamed, tok, method="sft", seed=1) != key


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the process's memory from /proc (Linux)")
def test_streaming_stays_within_its_buffer_on_data_larger_than_it(tmp_path: Path, tiny_model_dir: Path) -> None:
    """About 21 MB of chats through an 8 MiB buffer: the process's own memory grows by about the buffer, where
    the in-memory path grows by many times the data (scripts/bench_stream_memory.py; figures in docs/data.md)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from bench_stream_memory import measure

    result = measure(tiny_model_dir, 12_000, 8, tmp_path)
    assert result["size_mb"] > 2.5 * 8 and result["streaming"]["records"] == result["in_memory"]["records"] == 12_000
    assert result["streaming"]["grown_mb"] < 2 * 8, result
    assert result["in_memory"]["grown_mb"] > 4 * result["size_mb"], result


@pytest.mark.parametrize("streaming", [False, True])
def test_a_file_that_breaks_halfway_says_how_many_of_its_records_are_used(tmp_path: Path, streaming: bool) -> None:
    """Records read before a file's fault are used (streaming cannot take them back); the problem says how many."""
    import gzip

    rows = "".join(json.dumps(chat(f"question {i} " + "x" * 200, f"answer {i}")) + "\n" for i in range(20_000))
    packed = gzip.compress(rows.encode(), mtime=0)
    (tmp_path / "d.jsonl.gz").write_bytes(packed[: len(packed) * 2 // 3])  # a download cut off
    report = check_data(data_cfg(tmp_path / "d.jsonl.gz", on_error="skip", streaming=streaming), method="sft")
    used = report.train_records + report.eval_records
    assert 0 < used < 20_000
    assert [p.message.endswith(f"; the {used} records before it are used") for p in report.problems] == [True]


def test_a_stop_signal_while_a_template_renders_is_the_runs_stop_not_a_bad_record(
        tmp_path: Path, tok: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The signal handler raises its stop wherever the main thread is; inside a chat template's render it was
    caught as the template failing on that record ("bad data: file:line: the chat template ... failed")."""
    from nova.data import template
    from nova.errors import TrainingStopped

    def interrupted(chunks: Any) -> Any:
        raise TrainingStopped("SIGINT received")

    monkeypatch.setattr(template, "bounded", interrupted)
    data = write_jsonl(tmp_path / "d.jsonl", _rows(10))
    with pytest.raises(TrainingStopped, match="SIGINT received"):
        prepare_stage_data(data_cfg(data, tmp=tmp_path, on_error="skip"), tok, method="sft", seed=1)
