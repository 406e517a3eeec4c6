"""A phase trained from streamed data (data.streaming) trains what the in-memory path trains: the same rows,
so the same losses and adapter, step for step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT
from nova.config import load_yaml_config
from nova.console import RunLog
from nova.runs.layout import RunDir
from nova.train.pipeline import run_config

pytestmark = pytest.mark.trains


def _yaml(tmp: Path, model: Path, name: str, streaming: bool) -> Path:
    data = ROOT / "data" / "doica_short_ro.jsonl"
    text = f"""
name: {name}
model:
  base: {model}
  quantization: none
data:
  datasets:
    - path: {data}
  eval_datasets:
    - path: {ROOT / "data" / "doica_ro.jsonl"}
      max_samples: 8
  max_length: 96
  streaming: {str(streaming).lower()}
  stream_buffer_mb: 8
  shard_records: 100
  cache_dir: {tmp / "cache"}
training:
  max_steps: 4
  micro_batch_size: 2
  gradient_accumulation_steps: 2
  learning_rate: 5.0e-3
  warmup_steps: 1
  logging_steps: 1
  eval_steps: 4
  save_steps: 4
output_dir: {tmp / name}
logs_dir: {tmp / "logs"}
smoke_prompts: []
"""
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    return path


def _losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_streaming_trains_what_the_in_memory_path_trains(tmp_path: Path, tiny_model_dir: Path) -> None:
    for name, streaming in (("memory", False), ("streamed", True)):
        config = load_yaml_config(_yaml(tmp_path, tiny_model_dir, name, streaming))
        run_config(config, log=RunLog(tmp_path / f"{name}.log"))
    assert _losses(tmp_path / "memory") == _losses(tmp_path / "streamed") and len(_losses(tmp_path / "memory")) == 4
    a = load_file(str(tmp_path / "memory" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "streamed" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    reports = [json.loads(RunDir(tmp_path / name).data_report("sft").read_text()) for name in ("memory", "streamed")]
    assert reports[0]["train_records"] == reports[1]["train_records"] > 0
    assert reports[1]["split"] == "eval_datasets: 8 records" and "hit" not in reports[1]["cache"]
