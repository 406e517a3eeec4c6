"""GRPO survives kill -9: the resumed run samples, scores and trains exactly as the uninterrupted one.

GRPO's state beyond the adapter and optimizer is its sampling: the prompt order (TRL's seeded repeat
sampler) and the random numbers generation draws from, which the checkpoint's RNG state carries. A
run killed at its step-4 checkpoint and resumed must log the same loss and reward at every step and end
with the same adapter as a run never interrupted (with two micro batches per step and a KL term, so the
generation batch split and the reference pass are resumed too).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_methods_resume import adapter, finish, kill_at_checkpoint, start

from conftest import ROOT

pytestmark = pytest.mark.trains  # whole runs: outside the development loop (README, "Development")

STEPS = 6


def config(tmp: Path, model: Path) -> Path:
    text = f"""
name: run
model: {{base: {model}, quantization: nf4}}
lora: {{r: 8, alpha: 16, dropout: 0.1}}
method: grpo
data: {{datasets: [{{path: {ROOT / "data" / "arithmetic.jsonl"}}}], eval_split: 0.0, cache_dir: {tmp / "cache"}}}
grpo:
  num_generations: 4
  max_prompt_length: 64
  max_completion_length: 6
  temperature: 0.1
  beta: 0.1
  rewards: [{{name: regex, pattern: "[0-9]"}}, {{name: length, target: 4, weight: 0.5}}]
training: {{max_steps: {STEPS}, micro_batch_size: 4, gradient_accumulation_steps: 2, learning_rate: 5.0e-2,
           warmup_steps: 1, logging_steps: 1, save_steps: 2, save_total_limit: 2, gradient_checkpointing: false,
           seed: 7}}
output_dir: {tmp / "run"}
logs_dir: {tmp / "logs"}
"""
    path = tmp / "run.yaml"
    path.write_text(text)
    return path


def logged(run: Path) -> dict[int, tuple[float, float, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: (r["loss"], r["reward"], r["kl"]) for r in rows if "loss" in r}


def test_sigkill_then_resume_follows_the_same_trajectory(tiny_model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "ref").mkdir()
    reference = start(config(tmp_path / "ref", tiny_model_dir))  # uninterrupted, alongside
    (tmp_path / "killed").mkdir()
    cfg = config(tmp_path / "killed", tiny_model_dir)
    run = tmp_path / "killed" / "run"
    proc = start(cfg)
    kill_at_checkpoint(proc, run / "checkpoints" / "grpo" / "checkpoint-4")
    assert not (run / "COMPLETE").exists()
    out = finish(start(cfg))
    assert "resuming from" in out
    finish(reference)
    ref, got = logged(tmp_path / "ref" / "run"), logged(run)
    assert sorted(got) == sorted(ref) == list(range(1, STEPS + 1))
    for step in ref:
        assert got[step] == pytest.approx(ref[step], abs=1e-5), step
    a, b = adapter(tmp_path / "ref" / "run"), adapter(run)
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max() < 1e-5, key
