"""bf16 learns what fp32 learns (mixed precision), on every CPU: both dtypes run here, whatever `auto` picks.

Two causes made DPO fail in bf16 (scripts/bf16_check.py measures both):
- the trainable adapter lived in bf16 (TRL's cast of a 4-bit model's adapter), so updates smaller than
  bf16's resolution relative to a weight were rounded away; nova keeps it fp32 (master weights) and
  computes under bf16 autocast;
- the reference log-probs were precomputed over the dataset in other batches than the policy's, and
  in bf16 a kernel's rounding depends on the batch shape; nova scores the reference on the very micro
  batch the policy is scored on.

On this CPU bf16 kernels may happen to round the same way whatever the batch (AVX2 emulates bf16 in
fp32); AMX/oneDNN and GPUs do not. So the chained run below makes the model's numerics depend on the
batch shape on purpose (the final norm's output scaled by the padded length): a reference scored in
other batches then differs from the policy, one scored on the same batch cannot.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from nova.config import load_yaml_config
from nova.console import RunLog
from nova.train.pipeline import run_config

DTYPES = ["fp32", "bf16"]
TRAIN = ("{max_steps: %d, micro_batch_size: 4, gradient_accumulation_steps: %d, learning_rate: %s, "
         "warmup_steps: 0, logging_steps: 1, eval_steps: %d, save_steps: 100, gradient_checkpointing: false}")
LENGTHS = "max_prompt_length: 48, max_completion_length: 16"


def _write_data(tmp: Path, n: int = 32) -> dict[str, Path]:
    """A clear preference (a reply that names the number beats a refusal), with prompts of varied length so
    batches of other compositions pad to other lengths."""
    def ask(k: int) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"Name {k}." + " Please answer." * (k % 5)}]

    rows = {
        "sft": [{"messages": [*ask(k), {"role": "assistant", "content": f"It is {k}."}]} for k in range(n)],
        "pairs": [{"prompt": ask(k), "chosen": f"It is {k}.", "rejected": "No, never."} for k in range(n)],
        "feedback": [{"prompt": ask(k), "completion": f"It is {k}." if k % 2 else "No, never.", "label": bool(k % 2)}
                     for k in range(n)],
    }
    out = {}
    for name, records in rows.items():
        out[name] = tmp / f"{name}.jsonl"
        out[name].write_text("".join(json.dumps(r) + "\n" for r in records))
    return out


def _chain_yaml(tmp: Path, model: Path, dtype: str) -> Path:
    files = _write_data(tmp)
    text = f"""
output_dir: {tmp / "out"}
phases:
  - name: chat
    model: {{base: {model}, quantization: nf4, compute_dtype: {dtype}}}
    data: {{datasets: [{{path: {files["sft"]}}}], eval_split: 0.0, max_length: 64}}
    training: {TRAIN % (3, 1, "1.0e-2", 100)}
    logs_dir: {tmp / "logs"}
  - name: fb
    start_from: chat
    logs_dir: {tmp / "logs"}
    stages:
      - method: sft
        data: {{datasets: [{{path: {files["sft"]}}}], eval_split: 0.0, max_length: 64}}
        training: {TRAIN % (2, 1, "1.0e-2", 100)}
      - method: dpo
        data: {{datasets: [{{path: {files["pairs"]}}}], eval_split: 0.25}}
        dpo: {{beta: 0.1, {LENGTHS}}}
        training: {TRAIN % (8, 2, "5.0e-5", 8)}
      - method: kto
        data: {{datasets: [{{path: {files["feedback"]}}}], eval_split: 0.25}}
        kto: {{beta: 0.1, {LENGTHS}}}
        training: {TRAIN % (1, 2, "1.0e-3", 100)}
"""
    path = tmp / "pipeline.yaml"
    path.write_text(text)
    return path


def _shape_dependent_norm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Numerics that depend on the batch shape, as bf16 kernels' rounding does on AMX CPUs and GPUs: the
    final norm's output scaled by 1 + 1e-3 x the padded length (tiny, and the same for a batch scored twice)."""
    from transformers.models.llama import modeling_llama

    original = modeling_llama.LlamaRMSNorm.forward

    def forward(self: Any, hidden_states: Any) -> Any:
        return original(self, hidden_states) * (1 + 1e-3 * hidden_states.shape[-2])

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", forward)


@pytest.fixture(scope="module")
def chains(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    """The same chained run in fp32 and in bf16: {dtype: the fb phase's run directory}."""
    runs = {}
    for dtype in DTYPES:
        tmp = tmp_path_factory.mktemp(f"bf16-chain-{dtype}")
        with pytest.MonkeyPatch.context() as monkeypatch:
            _shape_dependent_norm(monkeypatch)
            run_config(load_yaml_config(_chain_yaml(tmp, tiny_model_dir, dtype)), log=RunLog(tmp / "log.txt"))
        runs[dtype] = tmp / "out" / "fb"
    return runs


def _rows(run: Path, stage: str) -> list[dict[str, Any]]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("stage") == stage]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stage", ["dpo", "kto"])
def test_before_any_update_the_policy_is_its_chained_reference(chains: dict[str, Path], dtype: str,
                                                               stage: str) -> None:
    """The first logged step's two micro batches are scored before the first update: every implicit reward
    (and KTO's KL estimate) is the policy against itself."""
    run = chains[dtype]
    first = next(r for r in _rows(run, stage) if "loss" in r)
    assert first["step"] == 1
    rewards = {k: v for k, v in first.items() if k.startswith("rewards/") or k == "kl"}
    assert rewards, first
    tolerance = 0.0 if dtype == "fp32" else 1e-3
    for key, value in rewards.items():
        if key != "rewards/accuracies":
            assert abs(value) <= tolerance, (key, value)
    if stage == "dpo":
        assert first["rewards/accuracies"] == 0.0  # no pair has a positive margin
        assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)


@pytest.mark.slow
def test_a_chained_dpo_learns_the_preference_alike_in_bf16_and_fp32(chains: dict[str, Path]) -> None:
    """At a preference learning rate (5e-5, after an SFT stage at 1e-2 grew the adapter) both lower the held-out
    loss below ln 2 and raise the margin, by about as much: with bf16 weights most of these updates would
    be rounded away."""
    ends = {}
    for dtype, run in chains.items():
        evals = [r for r in _rows(run, "dpo") if "eval_loss" in r]
        start, end = evals[0], evals[-1]
        assert start["step"] == 0 and end["step"] == 8
        assert start["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)
        assert end["eval_loss"] < math.log(2), (dtype, end)
        assert end["eval_rewards/margins"] > start["eval_rewards/margins"] > -1e-6, (dtype, end)
        ends[dtype] = end["eval_rewards/margins"]
    assert ends["bf16"] == pytest.approx(ends["fp32"], rel=0.2), ends


def _sft_yaml(tmp: Path, model: Path, dtype: str) -> Path:
    """Two SFT stages: the first trains the adapter away from its init (LoRA B starts at zero, and with it
    LoRA A's gradient); the second warms up for one step at learning rate 0, then takes one at 1e-6."""
    files = _write_data(tmp)
    common = ("micro_batch_size: 4, gradient_accumulation_steps: 1, logging_steps: 1, save_total_limit: 3, "
              "gradient_checkpointing: false")
    text = f"""
name: tiny
output_dir: {tmp / "run"}
logs_dir: {tmp / "logs"}
model: {{base: {model}, quantization: nf4, compute_dtype: {dtype}}}
lora: {{r: 4, alpha: 8, dropout: 0.0}}
stages:
  - method: sft
    data: {{datasets: [{{path: {files["sft"]}}}], eval_split: 0.0, max_length: 64}}
    training: {{max_steps: 2, learning_rate: 1.0e-2, warmup_steps: 0, save_steps: 100, {common}}}
  - method: sft
    data: {{datasets: [{{path: {files["sft"]}}}], eval_split: 0.0, max_length: 64}}
    training: {{max_steps: 2, learning_rate: 1.0e-6, lr_scheduler: constant_with_warmup, warmup_steps: 1,
                save_steps: 1, {common}}}
"""
    path = tmp / "sft.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("dtype", DTYPES)
def test_an_update_below_bf16_resolution_reaches_every_adapter_weight(tmp_path: Path, tiny_model_dir: Path,
                                                                    dtype: str) -> None:
    """The second stage's step 1 runs at learning rate 0 (warmup), so its checkpoint-1 holds the adapter as
    the stage began; step 2 at 1e-6 moves each weight by about 1e-6 (Adam), far below bf16's resolution at
    the adapter's values (LoRA A ~0.1: steps of 5e-4; B ~0.01: steps of 6e-5). Kept in bf16, almost none
    would change; fp32 master weights take every update."""
    import torch
    from safetensors.torch import load_file

    run_config(load_yaml_config(_sft_yaml(tmp_path, tiny_model_dir, dtype)), log=RunLog(tmp_path / "log.txt"))
    ckpt = tmp_path / "run" / "checkpoints" / "sft-2" / "checkpoint-1" / "adapter_model.safetensors"
    start, end = load_file(str(ckpt)), load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    assert all(v.dtype == torch.float32 for v in end.values())  # saved as trained: fp32
    changed = sum(int((end[k] != start[k]).sum()) for k in end)
    total = sum(v.numel() for v in end.values())
    assert changed / total > 0.99, f"{changed} of {total} adapter weights changed"
    moved = max(float((end[k] - start[k]).abs().max()) for k in end)
    assert moved < 1e-5  # the step was a 1e-6 one, not a bf16 rounding step
