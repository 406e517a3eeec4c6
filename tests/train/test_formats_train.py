"""Every data format trains end to end on the tiny model: one SFT stage mixing all SFT formats,
then a DPO stage mixing both preference forms."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from nova.config import load_yaml_config
from nova.console import RunLog
from nova.train.pipeline import run_config

pytestmark = pytest.mark.trains  # whole runs: outside the development loop (README, "Development")


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _sources(tmp: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    n = range(8)
    sft = {
        "messages": _write(tmp / "messages.jsonl", [{"messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Say {i}"},
            {"role": "assistant", "content": f"{i}"}]} for i in n]),
        "prompt_completion": _write(tmp / "pc.jsonl", [{"prompt": f"Count to {i}", "completion": f"1 .. {i}"}
                                                       for i in n]),
        "alpaca": _write(tmp / "alpaca.jsonl", [{"instruction": "Add one", "input": f"{i}", "output": f"{i + 1}"}
                                                for i in n]),
        "sharegpt": _write(tmp / "sharegpt.jsonl", [{"conversations": [
            {"from": "human", "value": f"yes or no {i}?"}, {"from": "gpt", "value": "yes" if i % 2 else "no"}]}
            for i in n]),
        "text": _write(tmp / "text.jsonl", [{"text": f"The quick brown fox number {i} jumps."} for i in n]),
    }
    dpo = {
        "preference": _write(tmp / "pref.jsonl", [{"prompt": f"Is {i} even?", "chosen": "yes" if i % 2 == 0 else "no",
                                                   "rejected": "no" if i % 2 == 0 else "yes"} for i in n]),
        "sharegpt_preference": _write(tmp / "pref_sharegpt.jsonl", [{
            "conversations": [{"from": "human", "value": f"Double {i}?"}],
            "chosen": {"from": "gpt", "value": f"{2 * i}"}, "rejected": {"from": "gpt", "value": "no idea"}}
            for i in n]),
    }
    return sft, dpo


def test_every_format_trains_end_to_end(tmp_path: Path, tiny_model_dir: Path) -> None:
    sft, dpo = _sources(tmp_path)
    sft_list = ", ".join(f"{{path: {p}}}" for p in sft.values())
    dpo_list = ", ".join(f"{{path: {p}}}" for p in dpo.values())
    train = ("{max_steps: 3, micro_batch_size: 4, gradient_accumulation_steps: 1, learning_rate: 1.0e-2, "
             "warmup_steps: 0, logging_steps: 1, save_steps: 100, gradient_checkpointing: false}")
    config = tmp_path / "formats.yaml"
    config.write_text(f"""
name: formats
model: {{base: {tiny_model_dir}, quantization: nf4}}
stages:
  - method: sft
    data: {{datasets: [{sft_list}], eval_split: 0.0, max_length: 64}}
    training: {train}
  - method: dpo
    data: {{datasets: [{dpo_list}], eval_split: 0.0}}
    dpo: {{max_prompt_length: 32, max_completion_length: 16}}
    training: {train}
output_dir: {tmp_path / "run"}
logs_dir: {tmp_path / "logs"}
""")
    run_config(load_yaml_config(config), log=RunLog(tmp_path / "log.txt"))
    run = tmp_path / "run"
    assert (run / "COMPLETE").exists()
    sft_report = json.loads((run / "stages" / "sft" / "data_report.json").read_text())
    dpo_report = json.loads((run / "stages" / "dpo" / "data_report.json").read_text())
    # Each source was detected as its own format and every record of it was kept.
    detected = {Path(src["path"]).name: src["formats"] for src in sft_report["sources"] + dpo_report["sources"]}
    expected = {p.name: {fmt: 8} for fmt, p in sft.items()} | {p.name: {"preference": 8} for p in dpo.values()}
    assert detected == expected
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for stage in ("sft", "dpo"):
        losses = [r["loss"] for r in rows if r["stage"] == stage and "loss" in r]
        assert len(losses) == 3 and all(math.isfinite(v) for v in losses), stage
