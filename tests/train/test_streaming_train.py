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


@pytest.mark.posix
def test_ctrl_c_while_tokenizing_keeps_the_finished_shards_and_the_same_command_resumes(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    """A real nova train, SIGINT while it tokenizes: exit 130 with one line saying the shards are kept, nothing
    left half-written; the same command then tokenizes only the rest and trains."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import run_nova

    rows = [{"messages": [{"role": "user", "content": f"question {i} " + "lorem " * 40},
                          {"role": "assistant", "content": f"answer {i} " + "ipsum " * 60}]} for i in range(30_000)]
    (tmp_path / "big.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / "k.yaml"
    config.write_text(_yaml(tmp_path, tiny_model_dir, "k", True).read_text()
                      .replace(str(ROOT / "data" / "doica_short_ro.jsonl"), str(tmp_path / "big.jsonl"))
                      .replace("shard_records: 100", "shard_records: 1000").replace("max_steps: 4", "max_steps: 1")
                      .replace("max_length: 96", "max_length: 1024"))
    proc = subprocess.Popen([sys.executable, "-m", "nova", "train", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    shards = tmp_path / "cache" / "data"
    deadline = time.time() + 120
    while len(list(shards.glob("*.partial/train-*.json"))) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    kept = len(list(shards.glob("*.partial/train-*.json")))
    assert proc.returncode == 130, out
    assert "SIGINT received with no training step under way (tokenizing): the finished shards of the tokenized " \
           "data are kept" in out
    assert 3 <= kept < 30 and not list(shards.glob("*.partial/.*")), "no half-written shard left"
    again = run_nova("train", "--config", str(config))
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"tokenization resumed: {kept} of 31 shards" in again.stdout + again.stderr  # 30 train, 1 eval
