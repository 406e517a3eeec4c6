"""Full fine-tuning in the shared paths: kill -9 and resume, and a pipeline where a LoRA phase follows.

The resumed run must follow the uninterrupted one step for step and end with the same weights (the
checkpoints hold the whole model and its optimizer state; the DPO stage's reference is precomputed
from the weights the stage starts from, also in the resumed process). A LoRA phase after a full
phase trains on the full phase's model directory as its base, with no adapters below its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_full_finetune import full_yaml, weights
from test_methods_resume import finish, kill_at_checkpoint, losses, start

from conftest import run_nova
from method_fixtures import write_method_data

pytestmark = pytest.mark.trains  # whole runs: outside the development loop (README, "Development")


def test_sigkill_in_each_stage_then_resume_follows_the_same_trajectory(tiny_model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "ref").mkdir()
    reference = start(full_yaml(tmp_path / "ref", tiny_model_dir, "run"))  # uninterrupted, alongside
    (tmp_path / "killed").mkdir()
    cfg = full_yaml(tmp_path / "killed", tiny_model_dir, "run")
    run = tmp_path / "killed" / "run"
    proc = start(cfg)
    for stage in ("sft", "dpo"):
        kill_at_checkpoint(proc, run / "checkpoints" / stage / "checkpoint-4")
        assert not (run / "COMPLETE").exists()
        proc = start(cfg)
    out = finish(proc)
    assert "resuming from" in out and "[run/sft] already done" in out
    finish(reference)
    ref, got = losses(tmp_path / "ref" / "run"), losses(run)
    assert sorted(got) == sorted(ref) == [(m, s) for m in ("dpo", "sft") for s in range(1, 9)]
    for key in ref:
        assert got[key] == pytest.approx(ref[key], abs=1e-5), key
    a, b = weights(tmp_path / "ref" / "run" / "model"), weights(run / "model")
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max() < 1e-5, key


def pipeline_yaml(tmp: Path, model: Path, *, first: str = "full", second: str = "lora") -> Path:
    files = write_method_data(tmp)
    data = "{{datasets: [{{path: {}}}], eval_split: 0.0, max_length: 64, cache_dir: %s}}" % (tmp / "cache")
    training = ("{max_steps: 4, micro_batch_size: 2, gradient_accumulation_steps: 1, learning_rate: %s, "
                "warmup_steps: 0, logging_steps: 1, save_steps: 4, seed: 5}")
    lr = {"full": "1.0e-3", "lora": "5.0e-3"}
    text = f"""
output_dir: {tmp / "out"}
phases:
  - name: one
    adapter: {first}
    model: {{base: {model}, quantization: none, compute_dtype: fp32}}
    data: {data.format(files["sft"])}
    training: {training % lr[first]}
    logs_dir: {tmp / "logs"}
  - name: two
    adapter: {second}
    start_from: one
    method: dpo
    data: {data.format(files["pairs"])}
    dpo: {{max_prompt_length: 32, max_completion_length: 16}}
    training: {training % lr[second]}
    logs_dir: {tmp / "logs"}
"""
    path = tmp / "pipeline.yaml"
    path.write_text(text)
    return path


def test_lora_phase_after_a_full_phase_trains_on_its_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    import math

    import torch
    from transformers import AutoModelForCausalLM

    from nova.config.schema import LoraConfig, ModelConfig
    from nova.model.adapters import add_trainable
    from nova.model.loading import choose_placement, load_base_model

    result = run_nova("train", "--config", str(pipeline_yaml(tmp_path, tiny_model_dir)), "--no-preflight",
                      env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = tmp_path / "out" / "one", tmp_path / "out" / "two"
    recorded = yaml.safe_load((two / "config.yaml").read_text())
    assert recorded["model"]["base"] == str(one / "model") and recorded["_chain"] == []
    assert (two / "adapter" / "adapter_config.json").is_file()
    notes = json.loads((two / "retention.json").read_text())["notes"]  # the full phase is an earlier phase
    assert any("'one' has no SFT holdout" in n for n in notes)
    # DPO's reference is the LoRA phase's starting point, the full phase's model: step 0 is log 2
    first = next(json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines() if "loss" in line)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)
    # the starting point (the full model plus a fresh LoRA adapter, B = 0) is the full phase's output itself
    cfg = ModelConfig(base=str(one / "model"), quantization="none", compute_dtype="fp32")
    start_model = add_trainable(load_base_model(cfg, choose_placement("fp32")), LoraConfig(), []).eval()
    plain = AutoModelForCausalLM.from_pretrained(str(one / "model"), dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    ids = torch.tensor([[1, 5, 9, 42, 7, 3, 11]])
    with torch.no_grad():
        assert torch.equal(start_model(ids).logits, plain(ids).logits)
        assert not torch.allclose(plain(ids).logits, base(ids).logits)  # the full phase changed the model
    merged = run_nova("merge", "--run", str(two))  # the LoRA phase merges onto the full phase's model
    assert merged.returncode == 0, merged.stderr[-2000:]
    assert (tmp_path / "out" / "two-merged" / "config.json").is_file()


def test_a_full_phase_after_a_lora_phase_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = pipeline_yaml(tmp_path, tiny_model_dir, first="lora", second="full")
    result = run_nova("train", "--config", str(cfg), "--no-preflight")
    assert result.returncode != 0
    assert "starts from LoRA phase(s) one" in result.stderr and "nova merge" in result.stderr
    assert not (tmp_path / "out").exists()
