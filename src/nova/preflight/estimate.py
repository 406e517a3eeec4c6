"""Peak GPU memory of a LoRA / QLoRA (or full fine-tuning) training step, from a model's config.json alone.

Everything here is a pure function of (model shape, settings), so it is testable without
torch and without weights. The peak of a step is the persistent part plus the worst of two
moments, each counted from the tensors autograd keeps on the code path that runs:

* persistent: frozen base weights at their stored size (nf4 blocks of 64 with fp32 or
  double-quantized constants; embeddings and lm_head stay 16-bit because bitsandbytes only
  replaces decoder ``nn.Linear`` layers), LoRA weights, their gradients, optimizer states;
* stored activations (``nova.preflight.activations``): every layer's input with gradient
  checkpointing, or every layer's saved tensors without it;
* the loss moment (``nova.preflight.loss_path``): final norm and LM head at their peak;
* the last-layer moment: with checkpointing, one recomputed layer and its gradient buffers;
* one dequantization buffer of the largest 4-bit weight, alive during any base matmul;
* the caching allocator's pool and the CUDA context (the fitted constants).

Full fine-tuning (``Settings.full``) has no LoRA terms: every weight, its gradient and its Adam
states are persistent (``_full_persistent``), each layer keeps its linears' inputs, and the
optimizer step can set the peak (``full_step_bytes``).

The free constants are fitted in ``nova.preflight.calibration`` against published
measurements; the result is ``CALIBRATED`` here, so the estimate never imports the
measurements. ``docs/memory.md`` gives every term's formula and source and each row's error.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from nova.files import GiB
from nova.methods import method_spec
from nova.preflight.activations import (
    dequant_bytes,
    layer_phase_bytes,
    lora_targets,
    stored_activations,
    stream_bytes,
)
from nova.preflight.loss_path import loss_phase_bytes
from nova.preflight.settings import ALL_LINEAR, Constants, LossImpl, Quant, Settings
from nova.preflight.shape import ModelShape, model_shape
from nova.preflight.uncertainty import band, regime

__all__ = ["ALL_LINEAR", "CALIBRATED", "NF4_BYTES", "NF4_DQ_BYTES", "Constants", "Estimate", "LossImpl",
           "ModelShape", "Quant", "Settings", "base_weight_bytes", "estimate_for_shape", "estimate_memory",
           "lora_params", "lora_targets", "model_shape", "optimizer_bytes_per_param", "stream_bytes", "weight_bytes",
           "with_batch"]

# QLoRA paper: 4-bit codes plus one fp32 absmax per block of 64 = 0.5 + 0.0625 bytes/param;
# double quantization stores the constants in 8 bits with a second-level block of 256.
NF4_BYTES = 0.5 + 4 / 64
NF4_DQ_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
# GPTQ 4-bit, group size 128: fp16 scale and a 4-bit zero point per group of 128 weights.
GPTQ4_BYTES = 0.5 + 2.5 / 128

# The result of ``nova.preflight.calibration.fit_constants`` on its fit rows; a test re-runs the fit
# and compares, so a change to the estimator that moves the fit fails until this is updated.
CALIBRATED = Constants(pool_fraction=0.34)


@dataclass(frozen=True)
class Estimate:
    """A peak-memory estimate: the total, where it goes (bytes), and its stated uncertainty."""

    breakdown: dict[str, int]
    lora_params: int
    settings: Settings
    notes: list[str] = field(default_factory=list)
    uncertainty: float = 0.0  # relative band for this regime (nova.preflight.uncertainty)
    regime: str = ""

    @property
    def total_bytes(self) -> int:
        return sum(self.breakdown.values())

    @property
    def upper_bytes(self) -> int:
        """The estimate plus its stated uncertainty: what a verdict of "fits" must leave room for.

        The band covers the modelled tensors and the pool; the CUDA context is a stated constant of
        its own (the GPU kit measures it), so a small model is not charged a band on a constant.
        """
        return self.total_bytes + int(self.uncertainty * self.reserved_bytes)

    def upper_with(self, margin: float) -> int:
        """The estimate plus the wider of ``margin`` and its own band (auto-fit's headroom)."""
        return self.total_bytes + int(max(margin, self.uncertainty) * self.reserved_bytes)

    @property
    def allocated_bytes(self) -> int:
        """Tensor peak (what ``torch.cuda.max_memory_allocated`` reports)."""
        return self.total_bytes - self.breakdown["allocator_overhead"] - self.breakdown["cuda_context"]

    @property
    def reserved_bytes(self) -> int:
        """Allocator pool peak (``max_memory_reserved``), without the CUDA context."""
        return self.total_bytes - self.breakdown["cuda_context"]

    def to_dict(self) -> dict[str, Any]:
        return {"total_bytes": self.total_bytes, "total_gib": round(self.total_bytes / GiB, 2),
                "upper_bytes": self.upper_bytes, "uncertainty": round(self.uncertainty, 3), "regime": self.regime,
                "breakdown": dict(self.breakdown), "lora_params": self.lora_params,
                "micro_batch_size": self.settings.micro_batch_size, "seq_len": self.settings.seq_len,
                "tokens_per_micro_batch": self.settings.tokens,
                "gradient_checkpointing": self.settings.gradient_checkpointing,
                "compute_bytes": self.settings.compute_bytes, "notes": list(self.notes)}


def lora_params(shape: ModelShape, settings: Settings) -> int:
    per_layer = sum(settings.lora_r * (i + o) for i, o in lora_targets(shape, settings).values())
    return per_layer * shape.layers


def base_weight_bytes(shape: ModelShape, settings: Settings) -> int:
    """Frozen weights at their stored size (the unquantized rest in fp32 after kbit preparation)."""
    other = 4 if settings.upcast_unquantized else settings.compute_bytes
    if settings.quantization in ("nf4", "fp4"):
        linear = NF4_DQ_BYTES if settings.double_quant else NF4_BYTES
    elif settings.quantization == "gptq4":
        linear = GPTQ4_BYTES
    elif settings.quantization == "int8":
        linear = 1.0
    else:
        linear = other = settings.compute_bytes
    return int(shape.linear_params * linear + (shape.embedding_params + shape.norm_params) * other)


def optimizer_bytes_per_param(optimizer: str, lora_bytes: int) -> float:
    """Adam keeps two states: in the parameter dtype (torch), fp32 (paged 32-bit) or 8-bit (bnb)."""
    if optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        return 2.0
    if optimizer == "paged_adamw_32bit":
        return 8.0
    return 2.0 * lora_bytes


def estimate_memory(config: dict[str, Any], settings: Settings, constants: Constants | None = None) -> Estimate:
    """Peak memory of one training step, with a breakdown (bytes); ``CALIBRATED`` constants by default."""
    return estimate_for_shape(model_shape(config), settings, constants or CALIBRATED)


def full_optimizer_bytes(shape: ModelShape, s: Settings) -> int:
    """Adam's two states over every weight (full fine-tuning).

    torch AdamW keeps them in the parameter dtype (``zeros_like(param)``: 2 x d per weight); bitsandbytes'
    8-bit AdamW keeps uint8 states (2 B) except for the input embedding, which the HF Trainer registers
    for 32-bit states (``register_module_override(..., {"optim_bits": 32})``), and tensors under 4096
    elements (the norms: ``min_8bit_size``), which stay fp32 (8 B); paged AdamW 32-bit: fp32 states, 8 B.
    """
    n = shape.total_params
    if s.optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        fp32_states = shape.vocab * shape.hidden + shape.norm_params
        return int((n - fp32_states) * 2 + fp32_states * 8)
    return int(n * optimizer_bytes_per_param(s.optimizer, weight_bytes(s)))


def weight_bytes(s: Settings) -> int:
    """Bytes per trained weight of full fine-tuning: fp32 master weights (``master_fp32``), else the compute dtype."""
    return 4 if s.master_fp32 else s.compute_bytes


def largest_weight(shape: ModelShape) -> int:
    """Elements of the largest single weight (the embedding, or an MLP matrix)."""
    return max(shape.vocab * shape.hidden, shape.largest_linear)


def full_step_bytes(shape: ModelShape, s: Settings) -> int:
    """The optimizer step of full fine-tuning, on top of weights, gradients and states (activations freed).

    torch's AdamW on CUDA runs the foreach kernels: ``_foreach_sqrt(exp_avg_sqs)`` makes one temporary
    the size of every state at once (n x d). Elsewhere (the CPU) it loops per tensor, and bitsandbytes'
    kernels update in place: one temporary of the largest weight at most.
    """
    if s.optimizer == "adamw_torch" and s.device == "cuda":
        return shape.total_params * weight_bytes(s)
    return largest_weight(shape) * weight_bytes(s)


def _full_persistent(shape: ModelShape, s: Settings) -> dict[str, int]:
    """Full fine-tuning: every weight in fp32 (mixed precision's master weights: nova.model.trained), its
    gradient in the same dtype (x2 with DDP's buckets), Adam's states, and the accumulation temporary of
    the largest weight (from the second micro batch on, autograd adds each new gradient into ``.grad``)."""
    n, d = shape.total_params, weight_bytes(s)
    weights, grads, optim = n * d, n * d * (2 if s.ddp else 1), full_optimizer_bytes(shape, s)
    if s.shard_world > 1:  # FSDP: each rank holds 1/world, plus the layer it has gathered whole
        w = s.shard_world
        weights, grads, optim = weights // w + weights // max(shape.layers, 1), grads // w, optim // w
    return {"base_weights": weights, "lora_weights": 0, "lora_gradients": 0, "optimizer_states": optim,
            "gradients": grads + largest_weight(shape) * d, "dpo_reference": 0}


def _step_beyond_backward(shape: ModelShape, s: Settings, backward: float) -> int:
    """Full fine-tuning: what the optimizer step needs beyond the backward's peak (activations are freed
    by then, so only the excess raises the peak)."""
    return max(0, full_step_bytes(shape, s) - int(backward)) if s.full else 0


def _persistent(shape: ModelShape, s: Settings) -> tuple[int, dict[str, int]]:
    if s.full:
        return 0, _full_persistent(shape, s)
    n_lora = lora_params(shape, s)
    lora_w = n_lora * s.lora_bytes
    grads = n_lora * s.lora_bytes * (2 if s.ddp else 1)
    optim = int(n_lora * optimizer_bytes_per_param(s.optimizer, s.lora_bytes))
    if s.zero2_bucket:
        # DeepSpeed ZeRO-2: an fp32 master copy, an fp32 gradient partition and fp32 Adam states beside
        # the 16-bit adapter, and two 16-bit gradient buckets (overlap_comm)
        grads += n_lora * 4 + 2 * s.zero2_bucket * s.compute_bytes
        optim = n_lora * (4 + 8)
    weights = base_weight_bytes(shape, s)
    gathered = 0
    if s.shard_world > 1:
        # FSDP2 / ZeRO-3: each rank keeps 1/world of every persistent tensor, plus the one layer it has
        # gathered whole to run it (4-bit weights stored in the compute dtype: the same bytes)
        w = s.shard_world
        gathered = weights // max(shape.layers, 1)
        weights, lora_w, grads, optim = weights // w + gathered, lora_w // w, grads // w, optim // w
    return n_lora, {
        "base_weights": weights,
        "lora_weights": lora_w + s.frozen_lora_params * s.lora_bytes,
        "lora_gradients": grads,
        "optimizer_states": optim,
        "gradients": 0,  # of the base weights: full fine-tuning only
        # the reference log-probs come from a no-grad pass (below the training peak); only the frozen copy of
        # the phase adapter, the stage's starting point, stays resident (a later stage that keeps a reference)
        "dpo_reference": lora_w if s.reference_adapter else 0,
    }


def estimate_for_shape(shape: ModelShape, settings: Settings, c: Constants) -> Estimate:
    """The estimate for an already read shape (auto-fit calls this once per candidate batch)."""
    s = settings
    n_lora, breakdown = _persistent(shape, s)
    stored = stored_activations(shape, s)
    loss = loss_phase_bytes(shape, s)
    layer = layer_phase_bytes(shape, s)
    dequant = dequant_bytes(shape, s)
    breakdown.update({
        "activations": int(stored), "logits_and_loss": int(loss) if loss >= layer else 0,
        "layer_recompute": int(layer) if layer > loss else 0, "dequant_buffers": int(dequant),
        "optimizer_step": _step_beyond_backward(shape, s, stored + max(loss, layer) + dequant),
        "allocator_overhead": 0, "cuda_context": 0})
    if s.device == "cpu" and not s.full:
        # The Trainer frees the adapter's gradients after each step (zero_grad(set_to_none=True)) and backward
        # makes them layer by layer from the top, after the loss: at the peak (the loss, or the top layer's
        # backward) none are alive yet. CUDA's pool keeps the freed blocks reserved; the CPU returns them. So
        # on the CPU they count only where they outgrow that peak (measured, docs/memory.md "The probe").
        breakdown["lora_gradients"] = max(0, breakdown["lora_gradients"] - int(stored + max(loss, layer) + dequant))
    if s.device == "cuda":
        breakdown["allocator_overhead"] = int(c.pool_fraction * (stored + layer + dequant))
        breakdown["cuda_context"] = int(c.cuda_context_bytes)
    notes = [f"peak at the {'loss' if loss >= layer else 'last layer backward'} ({s.tokens} tokens per micro batch)"]
    method_note = method_spec(s.method).memory_note  # what the method's step holds (nova.methods)
    if method_note:
        notes.append(method_note.format(sequences=s.sequences))
    if s.attn_implementation == "eager":
        notes.append(f"eager attention keeps [{s.row} x {s.row}] scores per head; sdpa does not")
    if s.full:
        master = " (fp32 master weights, bf16 autocast)" if s.master_fp32 and s.compute_bytes == 2 else ""
        notes.append(f"full fine-tuning: {shape.total_params / 1e9:.2f}B weights, gradients and {s.optimizer} "
                     f"states{master}")
    if s.upcast_unquantized and s.quantization != "none":
        notes.append("embeddings, lm_head and norms in fp32 and an fp32 residual stream (kbit preparation)")
    return Estimate(breakdown, n_lora, s, notes, band(s), regime(s))


def with_batch(settings: Settings, micro_batch_size: int, gradient_checkpointing: bool) -> Settings:
    """The same stage at another micro batch; a token budget (max_tokens_per_batch) is kept as is."""
    return replace(settings, micro_batch_size=micro_batch_size, gradient_checkpointing=gradient_checkpointing)
