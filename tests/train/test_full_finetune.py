"""Full fine-tuning (adapter: full) on the tiny model: every weight trains, the result is a plain HF model.

One phase (SFT then DPO, so the DPO stage's reference is the SFT result, precomputed) is trained
once for the module; the tests read its run directory. The model directory it leaves must load
with ``AutoModelForCausalLM.from_pretrained`` alone and behave as the model did in the process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_nova
from method_fixtures import write_method_data

pytestmark = pytest.mark.trains  # whole runs: outside the development loop (README, "Development")


def full_yaml(tmp: Path, model: Path, name: str = "full", *, steps: int = 8, dpo: bool = True,
              optimizer: str = "adamw_torch", extra: str = "") -> Path:
    files = write_method_data(tmp)
    training = (f"{{max_steps: {steps}, micro_batch_size: 2, gradient_accumulation_steps: 2, learning_rate: 2.0e-3, "
                f"warmup_steps: 1, logging_steps: 1, save_steps: 4, save_total_limit: 2, seed: 3, "
                f"optimizer: {optimizer}, gradient_checkpointing: true}}")
    data = "{{datasets: [{{path: {}}}], eval_split: 0.125, max_length: 64, cache_dir: %s}}" % (tmp / "cache")
    dpo_stage = f"""
  - method: dpo
    data: {data.format(files["pairs"])}
    dpo: {{beta: 0.1, max_prompt_length: 32, max_completion_length: 16}}
    training: {training.replace("2.0e-3", "1.0e-4")}""" if dpo else ""
    text = f"""
name: {name}
adapter: full
model: {{base: {model}, quantization: none, compute_dtype: fp32}}
stages:
  - method: sft
    data: {data.format(files["sft"])}
    training: {training}{dpo_stage}
smoke_prompts: ["Name 3."]
output_dir: {tmp / name}
logs_dir: {tmp / "logs"}
{extra}"""
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("full")
    result = run_nova("train", "--config", str(full_yaml(tmp, tiny_model_dir)), "--no-preflight",
                      env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "full"


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def test_layout_is_a_model_directory_with_no_adapter(full_run: Path) -> None:
    model = full_run / "model"
    assert (full_run / "COMPLETE").is_file() and not (full_run / "adapter").exists()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (model / name).is_file(), name
    for stage in ("sft", "dpo"):
        assert (full_run / "stages" / stage / "DONE").is_file()
        assert (full_run / "stages" / stage / "model" / "model.safetensors").is_file()
    checkpoint = full_run / "checkpoints" / "sft" / "checkpoint-8"
    assert (checkpoint / "model.safetensors").is_file() and (checkpoint / "optimizer.pt").is_file()
    complete = json.loads((full_run / "COMPLETE").read_text())
    assert complete["adapter"] == str(model)


def test_sft_loss_goes_down_and_every_weight_changes(full_run: Path, tiny_model_dir: Path) -> None:
    sft = [m["loss"] for m in metrics(full_run) if m.get("stage") == "sft" and "loss" in m]
    assert len(sft) == 8 and sft[-1] < sft[0] - 0.5 and sft[-1] == min(sft)
    before, after = weights(tiny_model_dir), weights(full_run / "stages" / "sft" / "model")
    assert before.keys() == after.keys()
    unchanged = [k for k in before if bool((before[k] == after[k]).all())]
    assert unchanged == []  # every tensor trained, the norms and embeddings included


def test_dpo_in_a_full_phase_starts_at_log2(full_run: Path) -> None:
    """The reference is the SFT result, precomputed: at DPO's first step policy == reference."""
    import math

    first = next(m for m in metrics(full_run) if m.get("stage") == "dpo" and "loss" in m)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert abs(first.get("rewards/margins", 0.0)) < 1e-4


def test_output_loads_with_plain_transformers_and_answers_as_in_process(full_run: Path) -> None:
    """smoke.jsonl was answered by the model in the training process; from_pretrained gives the same."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nova.model.generate import generate_answers

    model = AutoModelForCausalLM.from_pretrained(str(full_run / "model"), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(full_run / "model"))
    smoke = [json.loads(line) for line in (full_run / "smoke.jsonl").read_text().splitlines()]
    assert smoke[0]["base_answer"] is None  # the base is not kept beside a fully trained model
    assert generate_answers(model.eval(), tokenizer, ["Name 3."], max_new_tokens=64) == [smoke[0]["answer"]]


def test_nova_infer_loads_the_run_as_plain_from_pretrained(full_run: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from nova.infer import load_model

    loaded = load_model(full_run)
    assert not loaded.has_adapters
    plain = AutoModelForCausalLM.from_pretrained(str(full_run / "model"), dtype=torch.float32).eval()
    ids = torch.tensor([[1, 5, 9, 42, 7, 3]])
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, plain(ids).logits)
    result = run_nova("infer", "--model", str(full_run), "--prompt", "Name 3.", "--max-new-tokens", "8")
    assert result.returncode == 0, result.stderr[-2000:]


def test_merge_says_there_is_nothing_to_merge(full_run: Path) -> None:
    result = run_nova("merge", "--run", str(full_run))
    assert result.returncode != 0
    assert "nothing to merge" in result.stderr and str(full_run / "model") in result.stderr
    assert not (full_run.parent / "full-merged").exists()


def test_export_takes_the_model_directory(full_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "full.gguf"
    result = run_nova("export", "--model", str(full_run / "model"), "--format", "gguf", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.is_file() and out.stat().st_size > 0


def test_resume_with_the_kind_changed_refuses(full_run: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    """The adapter kind is part of every stage's fingerprint: a LoRA config on the full run's directory refuses."""
    cfg = full_yaml(full_run.parent, tiny_model_dir).read_text()
    lora = tmp_path / "lora.yaml"
    lora.write_text(cfg.replace("adapter: full\n", "adapter: lora\n"))
    result = run_nova("train", "--config", str(lora), "--no-preflight")
    assert result.returncode != 0
    assert "adapter" in result.stderr and "full" in result.stderr


@pytest.mark.parametrize("optimizer", ["adamw_8bit", "paged_adamw_8bit"])
def test_bitsandbytes_8bit_adam_trains_a_full_model_on_the_cpu(tiny_model_dir: Path, tmp_path: Path,
                                                               optimizer: str) -> None:
    """bitsandbytes 0.50 runs its 8-bit AdamW on the CPU (paged falls back to unpaged there): uint8 states
    in the checkpoint, fp32 for the embedding (the HF Trainer's override) and for tensors under 4096 elements."""
    import torch

    cfg = full_yaml(tmp_path, tiny_model_dir, steps=4, dpo=False, optimizer=optimizer)
    result = run_nova("train", "--config", str(cfg), "--no-preflight", env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "full"
    losses = [m["loss"] for m in metrics(run) if "loss" in m]
    assert len(losses) == 4 and losses[-1] < losses[0]
    state = torch.load(run / "checkpoints" / "sft" / "checkpoint-4" / "optimizer.pt", weights_only=False)["state"]
    dtypes = {str(s.get("__bnb_optimizer_quant_state__", s)["state1"].dtype) for s in state.values()}
    assert dtypes == {"torch.uint8", "torch.float32"}


def test_fp16_weights_are_refused_before_anything_loads() -> None:
    import torch

    from nova.errors import NovaError
    from nova.model.loading import Placement
    from nova.model.trained import Full, Lora

    with pytest.raises(NovaError, match="cannot train fp16 weights") as info:
        Full().check_placement(Placement("cuda", torch.float16))
    assert "compute_dtype: fp32" in (info.value.hint or "")
    Full().check_placement(Placement("cuda", torch.bfloat16))
    Full().check_placement(Placement("cpu", torch.float32))
    Lora().check_placement(Placement("cuda", torch.float16))  # an adapter stays fp32 whatever the compute dtype


def test_kto_after_sft_in_a_full_phase_starts_at_its_reference(tiny_model_dir: Path, tmp_path: Path) -> None:
    """KTO's reference in a full phase is the SFT result, precomputed: at step 0 every reward and the KL
    estimate are 0, so each reply's loss is 1 - sigmoid(0) = 0.5; and KTO then trains."""
    files = write_method_data(tmp_path)
    training = ("{max_steps: 4, micro_batch_size: 2, gradient_accumulation_steps: 1, learning_rate: %s, "
                "warmup_steps: 0, logging_steps: 1, eval_steps: 4, save_steps: 4, seed: 3}")
    data = "{{datasets: [{{path: {}}}], eval_split: %s, max_length: 64, cache_dir: %s}}"
    cfg = tmp_path / "kto.yaml"
    cfg.write_text(f"""
name: full
adapter: full
model: {{base: {tiny_model_dir}, quantization: none, compute_dtype: fp32}}
stages:
  - method: sft
    data: {data.format(files["sft"]) % (0.0, tmp_path / "cache")}
    training: {training % "2.0e-3"}
  - method: kto
    data: {data.format(files["feedback"]) % (0.25, tmp_path / "cache")}
    kto: {{beta: 0.1, max_prompt_length: 32, max_completion_length: 16}}
    training: {training % "1.0e-4"}
output_dir: {tmp_path / "full"}
logs_dir: {tmp_path / "logs"}
""")
    result = run_nova("train", "--config", str(cfg), "--no-preflight", env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    evals = [m for m in metrics(tmp_path / "full") if m.get("stage") == "kto" and "eval_loss" in m]
    assert evals[0]["step"] == 0 and evals[0]["eval_loss"] == pytest.approx(0.5, abs=1e-4)
    assert abs(evals[0]["eval_kl"]) < 1e-4
    assert (tmp_path / "full" / "model" / "model.safetensors").is_file()
