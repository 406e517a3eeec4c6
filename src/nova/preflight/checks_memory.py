"""The memory check: each stage's estimated peak against the chosen GPU's free memory (or RAM).

``stage_settings`` turns a stage's config into the estimator's ``Settings``; ``planned_settings`` adds
what its place in the plan holds in memory (a reference copy of the adapter, the chain's frozen
adapters, full fine-tuning). Preflight and auto-fit in ``nova train`` (``fit_stage``) both size a
stage through ``planned_settings``, so they size it the same way. A check that does not fit lists
every way out that would work, most direct first.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from nova.config.schema import LoraConfig, ModelConfig, StageConfig
from nova.files import GiB, MiB
from nova.plan import PlannedPhase, PlannedStage
from nova.preflight.estimate import (
    ALL_LINEAR,
    CALIBRATED,
    Estimate,
    ModelShape,
    Settings,
    estimate_for_shape,
    lora_params,
    model_shape,
)
from nova.preflight.fit import FitChoice, fit_batch
from nova.preflight.gpus import GpuInfo, GpuSnapshot
from nova.preflight.probe_calibration import calibrated
from nova.preflight.report import TIGHT, Check, gib
from nova.system import AppleGpu

HELD_WORTH_NAMING = 256 * MiB  # smaller holders (a desktop, a browser) are not worth stopping
CPU_RUNTIME_BYTES = GiB  # resident size of a Python process with torch and transformers loaded


ATTENTION = {"eager": "eager", "flash_attention_2": "flash_attention_2"}  # auto: transformers picks sdpa


def stage_settings(model: ModelConfig, lora: LoraConfig, stage: StageConfig, *, on_gpu: bool,
                   reference_adapter: bool = False, frozen_lora_params: int = 0, full: bool = False,
                   apple: AppleGpu | None = None, cpu_bf16: bool | None = None) -> Settings:
    """The memory-relevant settings of one stage, on the code path nova runs for it.

    SFT (nova.train): through the trainer's ``model.forward`` (nova's loss is a forward mode of the
    model, nova.train.methods.loss.install_sft_loss), so under accelerate's autocast; LoRA dropout as
    configured, nova's own loss over every position (the worst
    case: text data trains every token), padding-free with SDPA run once per packed sequence and no
    mask (nova.model.attention; flash-attention: varlen, no mask either), eager's rows cut at
    data.max_length with a block-diagonal mask (nova.train.methods.sft.choose_batching), or padded
    batches with a mask.
    DPO (TRL): through ``model.forward`` under autocast, dropout disabled, chosen and rejected
    padded into one batch, TRL's fused head over completion positions only. ORPO and SimPO run the
    same path (nova.train.methods.kto); KTO the same with one reply per prompt.
    ``full`` (adapter: full): no LoRA at all; every weight, its gradient and its optimizer states count.
    ``apple`` (Apple's GPU, mps): the compute dtype ``auto`` gives there, and no CUDA context or pool.
    """
    # the dtype training computes in (nova.model.loading.dtype_for); cpu_bf16 None: this machine's CPU
    on_cpu_bf16 = apple.bf16 if apple is not None else (_cpu_bf16() if cpu_bf16 is None else cpu_bf16)
    auto_fp32 = not on_gpu and not on_cpu_bf16
    fp32 = model.compute_dtype == "fp32" or (model.compute_dtype == "auto" and auto_fp32)
    t = stage.training
    attn = ATTENTION.get(model.attn_implementation, "sdpa")
    common = Settings(
        quantization=model.quantization, double_quant=model.double_quant, compute_bytes=4 if fp32 else 2,
        lora_r=lora.r, target_modules=_targets(lora),
        lora_dropout=lora.dropout, lora_bytes=4, micro_batch_size=t.micro_batch_size,
        gradient_checkpointing=t.gradient_checkpointing, optimizer=t.optimizer, method=stage.method,
        attn_implementation=attn, frozen_lora_params=frozen_lora_params,
        # a copy of the adapter as the stage began, for a method that keeps a reference (its spec)
        reference_adapter=reference_adapter and stage.spec.keeps_reference(stage.method_settings),
        device="cuda" if on_gpu else "cpu")
    if full:
        common = replace(common, quantization="none", lora_r=0, target_modules=(), lora_dropout=0.0,
                         reference_adapter=False, frozen_lora_params=0, full=True, master_fp32=True)
    if stage.spec.cuts_prompts:  # TRL caps each sequence at prompt + completion lengths (the method's section)
        lengths = stage.length_settings
        seq = min(stage.data.max_length, lengths.max_prompt_length + lengths.max_completion_length)
        completion = common.sequences * min(seq, lengths.max_completion_length)
        return replace(common, seq_len=seq, lora_dropout=0.0, attention_masked=attn != "flash_attention_2",
                       loss_impl="fused", loss_tokens=completion, autocast=True)
    seq = stage.data.max_length
    padding_free = t.packing != "pad"
    budget = None if t.max_tokens_per_batch is None else max(t.max_tokens_per_batch, seq)
    unmasked = attn == "flash_attention_2" or (padding_free and attn == "sdpa")
    return replace(common, seq_len=seq, tokens_override=budget, attention_row=seq if padding_free else None,
                   attention_masked=not unmasked, loss_impl="nova", autocast=True)


def _cpu_bf16() -> bool:
    """Whether training on this CPU computes in bf16 (compute_dtype auto), as nova.model.loading decides."""
    from nova.model.loading import cpu_has_native_bf16

    return cpu_has_native_bf16()


def planned_settings(shape: ModelShape, planned: PlannedPhase, stage: PlannedStage, *, on_gpu: bool,
                     apple: AppleGpu | None = None, cpu_bf16: bool | None = None) -> Settings:
    """``stage_settings`` for a stage of the plan: with the frozen copy of the phase adapter a later stage
    keeps as its reference (the method's spec says whether it keeps one), and the chain's adapters stacked
    frozen under the trained one (their settings: the plan's)."""
    cfg = stage.config
    reference = stage.index > 0  # a later stage of the phase: its reference is a copy of the adapter
    frozen = sum(lora_params(shape, Settings(lora_r=lora.r, target_modules=_targets(lora)))
                 for lora in planned.chain_loras)
    return stage_settings(planned.model, planned.phase.lora, cfg, on_gpu=on_gpu, reference_adapter=reference,
                          frozen_lora_params=frozen, full=planned.full, apple=apple, cpu_bf16=cpu_bf16)


def fit_stage(model_config: dict[str, Any], planned: PlannedPhase, stage: PlannedStage, budget_bytes: int, *,
              margin: float = 0.10, gpu_name: str | None = None) -> FitChoice:
    """Auto-fit for one stage of the plan (what ``nova train`` calls with the GPU's free bytes), sized as
    preflight sizes it, and corrected by a probe of this model and path on this GPU (``gpu_name``) when one
    is stored. Returns a ``FitChoice``: micro_batch_size, gradient_accumulation_steps,
    gradient_checkpointing, fits, changed and a one-line reason to record in the run directory."""
    shape = model_shape(model_config)
    settings = planned_settings(shape, planned, stage, on_gpu=True)
    return fit_batch(shape, settings, stage.config.training.gradient_accumulation_steps, budget_bytes,
                     margin=margin, min_micro=stage.config.min_micro_batch,
                     calibrate=lambda e: calibrated(e, shape, gpu_name) if gpu_name else e)


def _targets(lora: LoraConfig) -> tuple[str, ...]:
    return ALL_LINEAR if lora.target_modules == "all-linear" else tuple(lora.target_modules)


@dataclass(frozen=True)
class MemoryContext:
    """What the memory check compares against."""

    snapshot: GpuSnapshot
    gpu: GpuInfo | None
    ram_available: int
    apple: AppleGpu | None = None  # no CUDA GPU but Apple's: training runs on mps, in the unified memory


def check_memory(label: str, shape: ModelShape, settings: Settings, stage: StageConfig,
                 ctx: MemoryContext) -> tuple[Check, Estimate, dict[str, Any] | None]:
    """Estimate vs free memory on the chosen GPU (or RAM on the CPU), with the ways out."""
    est = estimate_for_shape(shape, settings, CALIBRATED)
    est = calibrated(est, shape, ctx.gpu.name if ctx.gpu is not None and not ctx.gpu.hypothetical else None)
    probed = f"; {est.notes[-1]}" if "probe_correction" in est.breakdown else ""
    t = stage.training
    if ctx.gpu is None and ctx.apple is not None:
        return _apple_memory(label, est, settings, ctx.apple), est, None
    if ctx.gpu is None:
        need = est.total_bytes + CPU_RUNTIME_BYTES
        msg = (f"needs about {gib(need)} of RAM on the CPU ({gib(est.total_bytes)} for training plus about "
               f"{gib(CPU_RUNTIME_BYTES)} for Python, torch and transformers); {gib(ctx.ram_available)} "
               f"available{probed}")
        if need > ctx.ram_available:
            return Check(label, "fail", msg, _cpu_fix(settings, est, ctx.ram_available)), est, None
        if need > ctx.ram_available * TIGHT:
            return Check(label, "warn", f"{msg}: less than 10% headroom", _cpu_fix(settings, est,
                                                                                   ctx.ram_available)), est, None
        return Check(label, "pass", msg), est, None
    gpu, need, upper = ctx.gpu, est.total_bytes, est.upper_bytes
    gpu_name = None if gpu.hypothetical else gpu.name
    choice = fit_batch(shape, settings, t.gradient_accumulation_steps, gpu.free_bytes, constants=CALIBRATED,
                       min_micro=stage.min_micro_batch, calibrate=lambda e: calibrated(e, shape, gpu_name))
    auto = choice.to_dict() if t.auto_fit else None
    where = f"GPU {gpu.index} has {gib(gpu.free_bytes)} free"
    held = [p for p in gpu.processes if p.used_bytes >= HELD_WORTH_NAMING]
    if held and not gpu.hypothetical:
        where += " because " + " and ".join(f"{p.name} holds {gib(p.used_bytes)}" for p in held)
    head = (f"needs about {gib(need)} (up to {gib(upper)} with the {est.uncertainty:.0%} uncertainty of "
            f"{est.regime} sequences; {_batch_words(settings)}{probed}); {where}")
    if upper <= gpu.free_bytes:
        return Check(label, "pass", head), est, auto
    if t.auto_fit and choice.fits:
        return Check(label, "pass", f"{head}; auto_fit: {choice.reason}"), est, auto
    fix = _memory_fix(shape, settings, stage, ctx, upper, choice)
    if need <= gpu.free_bytes:
        return Check(label, "warn", f"{head}: may not fit (the estimate fits, its margin does not)", fix), est, auto
    return Check(label, "fail", head, fix), est, auto


def _batch_words(s: Settings) -> str:
    """What the estimate assumed about the micro batch, in the user's terms."""
    shape = f"{s.tokens} tokens per micro batch" if s.tokens_override else f"{s.micro_batch_size} x {s.seq_len} tokens"
    return shape + (", gradient checkpointing" if s.gradient_checkpointing else ", no gradient checkpointing")


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
        if other.index != gpu.index and other.free_bytes >= need:
            ways.append(f"use GPU {other.index} ({gib(other.free_bytes)} free; training.gpu: {other.index})")
    if choice.fits and choice.micro_batch_size != settings.micro_batch_size:
        ways.append(f"set micro_batch_size {settings.micro_batch_size} -> {choice.micro_batch_size} and "
                    f"gradient_accumulation_steps {t.gradient_accumulation_steps} -> "
                    f"{choice.gradient_accumulation_steps} (same effective batch {t.effective_batch_size})"
                    + (" with gradient checkpointing on" if choice.gradient_checkpointing and
                       not settings.gradient_checkpointing else ""))
    if not settings.gradient_checkpointing:
        ways.append("turn on gradient checkpointing (training.gradient_checkpointing: true)")
    if settings.attn_implementation == "eager":
        ways.append("use model.attn_implementation: sdpa (eager keeps every attention score)")
    shorter = _shorter_length(shape, settings, gpu.free_bytes)
    if shorter is not None:
        ways.append(f"shorten data.max_length {settings.seq_len} -> {shorter}")
    if not t.auto_fit and choice.fits:
        ways.append("set training.auto_fit: true to let nova choose")
    if not ways:
        ways.append(f"nothing in this config fits {gib(gpu.free_bytes)}: {choice.reason}")
    return ", or ".join(ways)


def _shorter_length(shape: ModelShape, settings: Settings, free: int) -> int | None:
    """The longest power-of-two fraction of max_length whose estimate, margin included, fits."""
    if settings.tokens_override is not None:
        return None  # a token budget, not the length, sets the micro batch
    seq = settings.seq_len // 2
    while seq >= 256:
        if estimate_for_shape(shape, replace(settings, seq_len=seq), CALIBRATED).upper_bytes <= free:
            return seq
        seq //= 2
    return None


def _apple_memory(label: str, est: Estimate, settings: Settings, apple: AppleGpu) -> Check:
    """On mps the GPU's memory is the Mac's RAM: the estimate against what is available of it now.

    What is known: the weights, adapter, optimizer and activations of the same code path (as on a
    CUDA GPU, without CUDA's context and allocator pool). What is not: the mps allocator's own
    overhead, never measured; the message says so rather than claiming the CUDA calibration.
    """
    need = est.total_bytes + CPU_RUNTIME_BYTES
    msg = (f"needs about {gib(need)} of unified memory on {apple.chip} ({gib(est.total_bytes)} for training by the "
           f"estimate calibrated on CUDA, less CUDA's context and pool; the mps allocator's overhead is not measured; "
           f"plus about {gib(CPU_RUNTIME_BYTES)} for Python, torch and transformers); {gib(apple.unified_available)} "
           f"available of {gib(apple.unified_total)}")
    fix = _cpu_fix(settings).replace("or train on a GPU", "turn on gradient checkpointing, or choose a smaller model")
    if need > apple.unified_available:
        return Check(label, "fail", msg, fix)
    if need > apple.unified_available * TIGHT:
        return Check(label, "warn", f"{msg}: less than 10% headroom", fix)
    return Check(label, "pass", msg)


def _cpu_fix(settings: Settings, est: Estimate | None = None, available: int | None = None) -> str:
    """On the CPU only the sequence length and the batch move the peak (no other device to use), unless the
    weights alone do not fit: then no length or batch helps, and saying so saves a round of edits."""
    if est is not None and available is not None:
        weights = est.breakdown["base_weights"] + est.breakdown.get("gradients", 0)
        if weights + CPU_RUNTIME_BYTES > available:
            return (f"the model's weights alone take {gib(weights)}, more than the {gib(available)} available: no "
                    "shorter length or smaller batch fits it; choose a smaller model (model.base) or train on a GPU")
    return (f"shorten data.max_length ({settings.seq_len}) or micro_batch_size ({settings.micro_batch_size}), "
            "or train on a GPU")
