"""Activation memory of a decoder layer, per token, from what autograd really keeps.

Counted from the code of the stack nova runs (transformers 5.x llama-family layers, PEFT LoRA,
bitsandbytes 4-bit, torch SDPA), per tensor that a backward formula needs:

* RMSNorm upcasts its input to fp32 and ``pow``/``mul`` save that copy: 4 B x hidden per norm.
* A frozen base linear (bitsandbytes ``MatMul4Bit`` or ``nn.Linear`` without weight grad) saves
  no activation: the input gradient needs only the weight. It dequantizes its weight into a
  temporary 16-bit buffer on every call (forward and backward).
* The LoRA branch saves its own input. Without autocast PEFT casts the input to the adapter's
  dtype (fp32 by default) in every adapted module separately; dropout keeps its output and a
  1-byte mask. Under autocast (TRL's DPO goes through ``model.forward``) nothing is cast and,
  without dropout, every module that reads the same tensor shares it.
* SDPA saves q, k, v, its output and the log-sum-exp. With an explicit mask (packed rows,
  padding) transformers repeats GQA keys/values to every head (``repeat_kv``) and torch turns
  the boolean mask into an additive bias that each layer's backward keeps. Eager attention
  keeps the fp32 softmax and its 16-bit cast: heads x row length per token.
* SwiGLU keeps the gate output (for SiLU), the SiLU output and the up output (for the product).

With gradient checkpointing (``use_reentrant=False``) a layer keeps only its input; backward
recomputes one layer at a time, so one layer's saved tensors plus its gradient buffers are
alive on top of every layer's input. Older bitsandbytes (0.41-0.43, used by some calibration
rows) kept each 4-bit linear's input in ``ctx.tensors``, a plain attribute that non-reentrant
checkpointing cannot drop: those inputs then stay for every layer (transformers issue #28339).
"""

from __future__ import annotations

from nova.preflight.settings import Settings
from nova.preflight.shape import ModelShape

# The tensor each adapted module reads: modules reading the same one share it when nothing is cast.
INPUTS = {"q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in", "qkv_proj": "attn_in",
          "o_proj": "attn_out", "gate_proj": "mlp_in", "up_proj": "mlp_in", "down_proj": "down_in"}
QKV = ("q_proj", "k_proj", "v_proj")


def stream_bytes(s: Settings) -> int:
    """Bytes per element of the residual stream: fp32 after prepare_model_for_kbit_training, and with full
    fine-tuning's fp32 master weights (fp32 embeddings and norms under autocast)."""
    return 4 if (s.upcast_unquantized and s.quantization != "none") or s.master_fp32 else s.compute_bytes


def lora_compute_bytes(s: Settings) -> int:
    """Dtype the LoRA branch runs in: the adapter's own without autocast, the autocast dtype with it."""
    return s.compute_bytes if s.autocast else max(s.lora_bytes, s.compute_bytes)


def lora_targets(shape: ModelShape, s: Settings) -> dict[str, tuple[int, int]]:
    """The linear layers the adapter targets, (in, out) each (matched by module name, as PEFT does).

    With a fused q/k/v projection (Qwen v1 ``c_attn``, lit-gpt's ``attn``) the targeted parts are
    one module: one input, one dropout, the targeted outputs.
    """
    chosen = {name: dims for name, dims in shape.linear_shapes().items() if name in s.target_modules}
    if s.fused_qkv and any(name in chosen for name in QKV):
        outs = sum(chosen.pop(name)[1] for name in QKV if name in chosen)
        chosen["qkv_proj"] = (shape.hidden, outs)
    return chosen


def _expanded_kv(shape: ModelShape, s: Settings) -> bool:
    """transformers' SDPA path repeats GQA keys/values when a mask is passed (eager always does)."""
    if shape.kv_heads == shape.heads:
        return False
    return s.attn_implementation == "eager" or (s.attn_implementation == "sdpa" and s.attention_masked)


def _mlp_width(shape: ModelShape) -> int:
    return shape.intermediate * shape.experts_per_token


def _lora_private(shape: ModelShape, s: Settings) -> tuple[float, set[str]]:
    """(bytes only the LoRA branches keep, per token; the layer inputs they keep as they are)."""
    c, d = lora_compute_bytes(s), s.compute_bytes
    total = 0.0
    shared: set[str] = set()
    for name, (fan_in, _) in lora_targets(shape, s).items():
        width = _mlp_width(shape) if name == "down_proj" else fan_in
        total += c * s.lora_r  # lora_A output, kept for lora_B
        if s.lora_dropout > 0:
            total += (c + 1) * width  # dropout output (in the branch dtype) and its bool mask
        elif c != d:
            total += c * width  # each module's own fp32 copy of its input
        else:
            shared.add(INPUTS[name])
    return total, shared


def _quantized_inputs(s: Settings) -> set[str]:
    """Layer inputs that old bitsandbytes kept in ``ctx.tensors`` (0.50 keeps only the weight)."""
    if not s.quant_saves_input or s.quantization not in ("nf4", "fp4", "int8"):
        return set()
    return {"attn_in", "attn_out", "mlp_in", "down_in"}


def _input_bytes(shape: ModelShape, s: Settings, names: set[str], *, beside_sdpa: bool = True) -> float:
    """Bytes per token of these layer inputs; ``beside_sdpa``: the layer's SDPA output is kept anyway."""
    widths = {"attn_in": shape.hidden, "attn_out": shape.q_dim, "mlp_in": shape.hidden, "down_in": _mlp_width(shape)}
    if beside_sdpa and s.attn_implementation != "eager":
        names = names - {"attn_out"}  # the o_proj input is SDPA's saved output itself
    return s.compute_bytes * sum(widths[n] for n in names)


def attention_saved_per_token(shape: ModelShape, s: Settings) -> float:
    """q, k, v, output, log-sum-exp; the per-layer mask bias (SDPA) or the scores (eager)."""
    d, q = s.compute_bytes, shape.q_dim
    kv = q if _expanded_kv(shape, s) else shape.kv_dim
    saved = d * (2 * q + 2 * kv) + 4 * shape.heads
    if s.attn_implementation == "eager":
        saved += d * q  # the transposed output copy that o_proj reads
        saved += shape.heads * s.row * (4 + d)  # fp32 softmax output and its 16-bit cast
    elif s.attn_implementation == "sdpa" and s.attention_masked:
        saved += d * s.row  # the boolean mask as an additive bias, [row x row] per row
    return saved


def _full_inputs(s: Settings) -> set[str]:
    """Full fine-tuning: every linear's weight gradient needs the linear's input, so each is kept."""
    return {"attn_in", "attn_out", "mlp_in", "down_in"} if s.full else set()


def layer_saved_per_token(shape: ModelShape, s: Settings) -> float:
    """Bytes one decoder layer keeps for backward, per token."""
    # a trainable RMSNorm weight also keeps the normalized input of its ``weight * x`` (16-bit)
    norms = 2 * 4 * shape.hidden + (2 * stream_bytes(s) * shape.hidden if s.full else 0)
    mlp = 3 * s.compute_bytes * _mlp_width(shape)
    private, shared = _lora_private(shape, s)
    inputs = _input_bytes(shape, s, shared | _quantized_inputs(s) | _full_inputs(s))
    return norms + attention_saved_per_token(shape, s) + mlp + private + inputs


def layer_backward_transient_per_token(shape: ModelShape, s: Settings) -> float:
    """Gradient buffers alive while one layer runs backward, beyond what it saved.

    The gradient of the layer output and of the residual, then the worst step: the down
    projection's input gradient (base path plus the LoRA path, fp32 without autocast, with a
    second copy through dropout and a cast back) or the SwiGLU product's three gradients. Eager
    attention adds the gradient of its scores (16-bit, fp32, and the softmax backward).
    """
    d, c = s.compute_bytes, lora_compute_bytes(s)
    i = _mlp_width(shape)
    lora_down = 0.0
    if "down_proj" in s.target_modules:
        lora_down = c * i * (2 if s.lora_dropout > 0 else 1) + (d * i if c != d else 0)
    worst = max(d * i + lora_down, 4 * d * i)
    if s.attn_implementation == "eager":
        worst = max(worst, shape.heads * s.row * (4 + 4 + d))
    return 2 * stream_bytes(s) * shape.hidden + worst


def mask_bytes(s: Settings) -> float:
    """The boolean mask transformers builds once per forward for SDPA/eager with packing or padding."""
    if s.attn_implementation == "flash_attention_2" or not s.attention_masked:
        return 0.0
    return float(s.rows * s.row * s.row)


def dequant_bytes(shape: ModelShape, s: Settings) -> float:
    """bitsandbytes dequantizes the weight of the linear it runs into a 16-bit temporary."""
    if s.quantization == "none":
        return 0.0
    return float(shape.largest_linear * s.compute_bytes)


def stored_activations(shape: ModelShape, s: Settings) -> float:
    """Alive through the whole backward: every layer's input (checkpointing) or every saved tensor."""
    if s.gradient_checkpointing:
        per_token = stream_bytes(s) * shape.hidden * shape.layers
        if not s.reentrant:  # ctx attributes are invisible to non-reentrant checkpointing: they stay
            per_token += _input_bytes(shape, s, _quantized_inputs(s), beside_sdpa=False) * shape.layers
    else:
        per_token = layer_saved_per_token(shape, s) * shape.layers
    return per_token * s.tokens + mask_bytes(s)


def layer_phase_bytes(shape: ModelShape, s: Settings) -> float:
    """On top of the stored activations while the last layer runs backward (recomputed with checkpointing)."""
    recomputed = layer_saved_per_token(shape, s) if s.gradient_checkpointing else 0.0
    return (recomputed + layer_backward_transient_per_token(shape, s)) * s.tokens
