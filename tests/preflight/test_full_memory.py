"""Full fine-tuning (adapter: full) in the memory estimate, the disk check and the learning-rate check.

The arithmetic is checked term by term on Llama-3.2-1B (1.236B weights, tied 128256 x 2048 embedding):
with torch's AdamW every weight costs 4 (fp32 master weights) + 4 (gradients) + 8 (two Adam states in the
parameter dtype, torch's ``zeros_like(param)``) = 16 bytes, in bf16 as in fp32: nova loads full
fine-tuning's weights in fp32 and computes under bf16 autocast, because bf16 weights and states would
round away nearly every update (nova.model.trained).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from preflight_support import busy_4090, cuda_env, data_file, model_dir, no_gpu

from nova.config.schema import ModelConfig, PhaseConfig, StageConfig, TrainingConfig
from nova.files import GiB
from nova.preflight.activations import layer_saved_per_token
from nova.preflight.checks_inputs import check_learning_rate
from nova.preflight.checks_memory import stage_settings
from nova.preflight.estimate import estimate_memory, model_shape

ROOT = Path(__file__).resolve().parents[2]
LLAMA_1B = json.loads((ROOT / "src" / "nova" / "resources" / "model_configs" / "Llama-3.2-1B.json").read_text())
N = 1_235_814_400  # Llama-3.2-1B's weights (tied embedding counted once)
EMBED = 128256 * 2048


def full_estimate(optimizer: str = "adamw_torch", dtype: str = "bf16", *, on_gpu: bool = True, batch: int = 4,
                  checkpointing: bool = True):  # type: ignore[no-untyped-def]
    phase = PhaseConfig(name="f", adapter="full", model=ModelConfig(base="m", quantization="none", compute_dtype=dtype),
                        training=TrainingConfig(micro_batch_size=batch, optimizer=optimizer,  # type: ignore[arg-type]
                                                gradient_checkpointing=checkpointing), data={"max_length": 1024})
    settings = stage_settings(phase.model, phase.lora, phase.stage_list[0], on_gpu=on_gpu, full=True)
    return estimate_memory(LLAMA_1B, settings)


def test_the_shape_counts_every_weight_once() -> None:
    assert model_shape(LLAMA_1B).total_params == N


def test_bf16_adamw_torch_is_sixteen_bytes_per_weight_plus_the_step() -> None:
    est = full_estimate()
    b = est.breakdown
    assert b["base_weights"] == 4 * N  # fp32 master weights under bf16 autocast
    assert b["optimizer_states"] == 8 * N  # exp_avg and exp_avg_sq in fp32, like the weights
    assert b["gradients"] == 4 * N + 4 * EMBED  # plus one accumulation temporary of the largest weight
    assert b["lora_weights"] == b["lora_gradients"] == b["dpo_reference"] == b["dequant_buffers"] == 0
    # the foreach AdamW step makes one temporary as large as all states (n x 4 B), above the backward's peak
    backward = b["activations"] + b["logits_and_loss"] + b["layer_recompute"]
    assert b["optimizer_step"] == 4 * N - backward > 0
    assert sum(b.values()) == est.total_bytes and est.lora_params == 0
    assert 24 * GiB < est.total_bytes < 26 * GiB  # 19.4 GiB of states + 3.3 GiB step + activations, pool, context
    assert any("fp32 master weights" in n for n in est.notes)


def test_eight_bit_and_paged_optimizers() -> None:
    eight, paged8, paged32 = (full_estimate(o).breakdown for o in ("adamw_8bit", "paged_adamw_8bit",
                                                                      "paged_adamw_32bit"))
    norms = 2048 * (2 * 16 + 1)
    # uint8 states, except the embedding (the HF Trainer gives nn.Embedding 32-bit states) and the norms
    # (bitsandbytes keeps tensors under 4096 elements in fp32)
    assert eight["optimizer_states"] == (N - EMBED - norms) * 2 + (EMBED + norms) * 8
    assert paged8["optimizer_states"] == eight["optimizer_states"]  # paged: the same states, pageable memory
    assert paged32["optimizer_states"] == 8 * N
    assert eight["optimizer_step"] == paged32["optimizer_step"] == 0  # bitsandbytes updates in place


def test_fp32_on_the_cpu_is_sixteen_bytes_per_weight() -> None:
    b = full_estimate(dtype="fp32", on_gpu=False).breakdown
    assert (b["base_weights"], b["optimizer_states"]) == (4 * N, 8 * N)
    assert b["gradients"] == 4 * N + 4 * EMBED
    assert b["cuda_context"] == b["allocator_overhead"] == 0


def test_full_fine_tuning_keeps_every_linear_input_and_the_norm_inputs() -> None:
    from dataclasses import replace

    settings = full_estimate(checkpointing=False).settings
    shape = model_shape(LLAMA_1B)
    frozen = replace(settings, full=False)  # the same path with nothing trained in the layer
    extra = layer_saved_per_token(shape, settings) - layer_saved_per_token(shape, frozen)
    h, i = 2048, 8192
    # q/k/v input, gate/up input, down input (bf16 under autocast); 2 norm inputs, fp32: fp32 master weights
    # (embeddings, norms) make the residual stream fp32
    assert extra == 2 * (h + h + i) + 2 * 4 * h
    gc, no_gc = full_estimate(), full_estimate(checkpointing=False)
    assert no_gc.breakdown["activations"] > 5 * gc.breakdown["activations"]


def test_torch_adamw_keeps_its_states_in_the_parameter_dtype() -> None:
    """What the 4 B/weight of bf16 AdamW rests on, checked on the installed torch."""
    import torch

    param = torch.nn.Parameter(torch.zeros(8, dtype=torch.bfloat16))
    param.grad = torch.ones_like(param)
    opt = torch.optim.AdamW([param], lr=1e-3)
    opt.step()
    assert opt.state[param]["exp_avg"].dtype == opt.state[param]["exp_avg_sq"].dtype == torch.bfloat16


def _full_config(tmp: Path, fixture: str, **training: object) -> Path:
    cfg = {"name": "ff", "output_dir": str(tmp / "run"), "adapter": "full",
           "model": {"base": str(model_dir(tmp, fixture)), "quantization": "none"},
           "data": {"datasets": [{"path": str(data_file(tmp))}], "max_length": 1024},
           "training": {"micro_batch_size": 2, "gradient_accumulation_steps": 8, "learning_rate": 2e-5, **training}}
    path = tmp / "full.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_preflight_sizes_a_full_phase_on_a_24_gib_gpu(tmp_path: Path) -> None:
    from nova.config.load import load_yaml_config
    from nova.preflight import run_preflight

    report = run_preflight(load_yaml_config(_full_config(tmp_path, "llama-3-8b")), probe=busy_4090(), env=cuda_env())
    memory = report.check("memory")
    assert memory.status == "fail"  # 8B x 16 B = 120 GiB of weights and states alone
    assert report.estimate is not None and report.estimate["total_bytes"] > 120 * GiB
    assert report.estimate["breakdown"]["gradients"] > 0 and report.estimate["lora_params"] == 0
    assert report.check("learning_rate").status == "pass"
    # 3 checkpoints of fp32 weights (32 GB) + fp32 AdamW states (64 GB), and the stage's model: ~299 GiB
    need = float(report.check("disk").message.split("about ")[1].split(" GiB")[0])
    assert 290 < need < 310
    report = run_preflight(load_yaml_config(_full_config(tmp_path, "smollm2-135m")), probe=no_gpu())
    assert report.check("memory").status in ("pass", "warn")
    assert "full fine-tuning" in " ".join(report.estimate["notes"])


@pytest.mark.parametrize(("method", "lr", "status"), [
    ("sft", 5e-6, "warn"), ("sft", 1e-5, "pass"), ("sft", 5e-5, "pass"), ("sft", 1e-4, "pass"), ("sft", 2e-4, "warn"),
    ("dpo", 5e-7, "pass"), ("dpo", 5e-5, "warn")])
def test_full_fine_tuning_learning_rates(method: str, lr: float, status: str) -> None:
    stage = StageConfig(method=method, training=TrainingConfig(learning_rate=lr))  # type: ignore[arg-type]
    check = check_learning_rate("lr", stage, full=True)
    assert check.status == status, check.message
    if status == "warn":
        assert f"full fine-tuning {method}" in check.message
    if (method, lr) == ("sft", 5e-6):  # our users' run that barely learned
        assert "barely learn" in check.message and "2e-05" in check.fix
    # the same rate on a LoRA phase: 2e-4 is LoRA's typical value, 5e-6 too low for an adapter
    assert check_learning_rate("lr", StageConfig(training=TrainingConfig(learning_rate=2e-4))).status == "pass"
