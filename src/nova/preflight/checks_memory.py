"""The memory check: each stage's estimated peak against the chosen GPU's free memory (or RAM).

``stage_settings`` turns a stage's config into the estimator's ``Settings`` (auto-fit in
``nova train`` uses it too, so preflight and training size a stage the same way). A check
that does not fit lists every way out that would work, most direct first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nova.config.schema import LoraConfig, ModelConfig, StageConfig
from nova.files import GiB, MiB
from nova.preflight.estimate import ALL_LINEAR, CALIBRATED, Estimate, ModelShape, Settings, estimate_for_shape
from nova.preflight.fit import FitChoice, fit_batch
from nova.preflight.gpus import GpuInfo, GpuSnapshot
from nova.preflight.report import TIGHT, Check, gib

HELD_WORTH_NAMING = 256 * MiB  # smaller holders (a desktop, a browser) are not worth stopping
CPU_RUNTIME_BYTES = GiB  # resident size of a Python process with torch and transformers loaded


def stage_settings(model: ModelConfig, lora: LoraConfig, stage: StageConfig, *, on_gpu: bool,
                   reference_adapter: bool = False) -> Settings:
    """The memory-relevant settings of one stage, with nova's defaults for what the config leaves open."""
    fp32 = model.compute_dtype == "fp32" or (model.compute_dtype == "auto" and not on_gpu)
    compute = 4 if fp32 else 2
    targets = ALL_LINEAR if lora.target_modules == "all-linear" else tuple(lora.target_modules)
    t = stage.training
    seq = stage.data.max_length
    if stage.method == "dpo":  # TRL caps each pair at prompt + completion lengths (dpo section)
        seq = min(seq, stage.dpo.max_prompt_length + stage.dpo.max_completion_length)
    return Settings(
        quantization=model.quantization, double_quant=model.double_quant, compute_bytes=compute,
        lora_r=lora.r, target_modules=targets, lora_dropout=lora.dropout, lora_bytes=4,
        micro_batch_size=t.micro_batch_size, seq_len=seq,
        gradient_checkpointing=t.gradient_checkpointing, optimizer=t.optimizer, method=stage.method,
        attn_implementation="eager" if model.attn_implementation == "eager" else "sdpa",
        loss_impl="fused", upcast_unquantized=model.quantization != "none", reference_adapter=reference_adapter,
        device="cuda" if on_gpu else "cpu")


@dataclass(frozen=True)
class MemoryContext:
    """What the memory check compares against."""

    snapshot: GpuSnapshot
    gpu: GpuInfo | None
    ram_available: int


def check_memory(label: str, shape: ModelShape, settings: Settings, stage: StageConfig,
                 ctx: MemoryContext) -> tuple[Check, Estimate, dict[str, Any] | None]:
    """Estimate vs free memory on the chosen GPU (or RAM on the CPU), with the ways out."""
    est = estimate_for_shape(shape, settings, CALIBRATED)
    t = stage.training
    if ctx.gpu is None:
        need = est.total_bytes + CPU_RUNTIME_BYTES
        msg = (f"needs about {gib(need)} of RAM on the CPU ({gib(est.total_bytes)} for training plus about "
               f"{gib(CPU_RUNTIME_BYTES)} for Python, torch and transformers); {gib(ctx.ram_available)} available")
        if need > ctx.ram_available:
            return Check(label, "fail", msg, _cpu_fix(settings)), est, None
        if need > ctx.ram_available * TIGHT:
            return Check(label, "warn", f"{msg}: less than 10% headroom", _cpu_fix(settings)), est, None
        return Check(label, "pass", msg), est, None
    gpu, need = ctx.gpu, est.total_bytes
    choice = fit_batch(shape, settings, t.gradient_accumulation_steps, gpu.free_bytes, constants=CALIBRATED)
    auto = choice.to_dict() if t.auto_fit else None
    where = f"GPU {gpu.index} has {gib(gpu.free_bytes)} free"
    held = [p for p in gpu.processes if p.used_bytes >= HELD_WORTH_NAMING]
    if held and not gpu.hypothetical:
        where += " because " + " and ".join(f"{p.name} holds {gib(p.used_bytes)}" for p in held)
    head = f"needs about {gib(need)} ({settings.micro_batch_size} x {settings.seq_len} tokens"
    head += ", gradient checkpointing" if settings.gradient_checkpointing else ", no gradient checkpointing"
    head += f"); {where}"
    if need <= gpu.free_bytes * TIGHT:
        return Check(label, "pass", head), est, auto
    if t.auto_fit and choice.fits:
        return Check(label, "pass", f"{head}; auto_fit: {choice.reason}"), est, auto
    fix = _memory_fix(shape, settings, stage, ctx, need, choice)
    if need <= gpu.free_bytes:
        return Check(label, "warn", f"{head}: less than 10% headroom", fix), est, auto
    return Check(label, "fail", head, fix), est, auto


def _memory_fix(shape: ModelShape, settings: Settings, stage: StageConfig, ctx: MemoryContext, need: int,
                choice: FitChoice) -> str:
    """Every way out that would work, most direct first."""
    gpu = ctx.gpu
    assert gpu is not None
    t = stage.training
    ways = []
    for p in gpu.processes:
        if p.used_bytes >= HELD_WORTH_NAMING and gpu.free_bytes + p.used_bytes >= need:
            ways.append(f"stop {p.name} (pid {p.pid}, frees {gib(p.used_bytes)})")
    for other in ctx.snapshot.gpus:
        if other.index != gpu.index and other.free_bytes * TIGHT >= need:
            ways.append(f"use GPU {other.index} ({gib(other.free_bytes)} free; training.gpu: {other.index})")
    if choice.fits and choice.micro_batch_size != settings.micro_batch_size:
        ways.append(f"set micro_batch_size {settings.micro_batch_size} -> {choice.micro_batch_size} and "
                    f"gradient_accumulation_steps {t.gradient_accumulation_steps} -> "
                    f"{choice.gradient_accumulation_steps} (same effective batch {t.effective_batch_size})"
                    + (" with gradient checkpointing on" if choice.gradient_checkpointing and
                       not settings.gradient_checkpointing else ""))
    if not settings.gradient_checkpointing:
        ways.append("turn on gradient checkpointing (training.gradient_checkpointing: true)")
    if not t.auto_fit and choice.fits:
        ways.append("set training.auto_fit: true to let nova choose")
    if not ways:
        ways.append(f"nothing in this config fits {gib(gpu.free_bytes)}: {choice.reason}")
    return ", or ".join(ways)


def _cpu_fix(settings: Settings) -> str:
    """On the CPU only the sequence length and the batch move the peak (no other device to use)."""
    return (f"shorten data.max_length ({settings.seq_len}) or micro_batch_size ({settings.micro_batch_size}), "
            "or train on a GPU")
