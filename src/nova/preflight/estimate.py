"""Peak GPU memory of a LoRA / QLoRA training step, from a model's config.json alone.

Everything here is a pure function of (model config dict, settings), so it is testable
without torch and without weights. The model follows what HF transformers + PEFT +
bitsandbytes keep alive at the peak of a step:

* frozen base weights at their stored size (nf4 blocks of 64 with fp32 or double-quantized
  constants; embeddings and lm_head stay 16-bit because bitsandbytes only replaces
  ``nn.Linear`` layers and skips the output embedding);
* LoRA weights, their gradients and the optimizer states;
* activations saved for backward: every layer without gradient checkpointing, or one layer
  input per layer plus one recomputed layer with it;
* logits and the loss: transformers upcasts the logits to fp32 before cross-entropy, so a
  step holds the 16-bit logits, an fp32 copy, log-softmax and its gradient (vocab x tokens);
* the caching allocator's pool (reserved / allocated) and the CUDA context.

The free constants (``Constants``) are fitted in ``nova.preflight.calibration`` against
published measurements; the result is ``CALIBRATED`` here, so the estimate never imports the
measurements; ``docs/memory.md`` lists each row and its error.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from nova.errors import NovaError
from nova.files import GiB, MiB

Quant = Literal["nf4", "fp4", "int8", "none"]
LossImpl = Literal["hf", "chunked", "fused"]
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# QLoRA paper: 4-bit codes plus one fp32 absmax per block of 64 = 0.5 + 0.0625 bytes/param;
# double quantization stores the constants in 8 bits with a second-level block of 256.
NF4_BYTES = 0.5 + 4 / 64
NF4_DQ_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)


@dataclass(frozen=True)
class ModelShape:
    """The architecture facts the estimate needs (all from config.json)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tie_embeddings: bool
    experts: int = 1
    experts_per_token: int = 1

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer of one decoder layer."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def linear_params(self) -> int:
        """Parameters in the decoder layers' linear layers (the ones bitsandbytes quantizes)."""
        per_layer = 0
        for name, (fan_in, fan_out) in self.linear_shapes().items():
            mult = self.experts if name in ("gate_proj", "up_proj", "down_proj") else 1
            per_layer += fan_in * fan_out * mult
        return per_layer * self.layers

    @property
    def embedding_params(self) -> int:
        """Input embedding plus an untied lm_head (both stay 16-bit under bitsandbytes)."""
        return self.vocab * self.hidden * (1 if self.tie_embeddings else 2)

    @property
    def norm_params(self) -> int:
        return self.hidden * (2 * self.layers + 1)

    @property
    def total_params(self) -> int:
        return self.linear_params + self.embedding_params + self.norm_params


def _first(cfg: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if cfg.get(key) is not None:
            return cfg[key]
    return default


def model_shape(config: dict[str, Any]) -> ModelShape:
    """Read a HF config.json dict (a multimodal one through its ``text_config``)."""
    cfg = config.get("text_config") or config
    hidden = _first(cfg, "hidden_size", "n_embd", "d_model")
    layers = _first(cfg, "num_hidden_layers", "n_layer", "num_layers")
    heads = _first(cfg, "num_attention_heads", "n_head")
    vocab = _first(cfg, "vocab_size")
    missing = [name for name, value in (("hidden_size", hidden), ("num_hidden_layers", layers),
                                        ("num_attention_heads", heads), ("vocab_size", vocab)) if value is None]
    if missing:
        raise NovaError(f"config.json lacks {', '.join(missing)}", hint="preflight needs a decoder-only LM config")
    head_dim = _first(cfg, "head_dim", default=None) or hidden // heads
    return ModelShape(
        hidden=int(hidden), layers=int(layers), heads=int(heads),
        kv_heads=int(_first(cfg, "num_key_value_heads", "n_head_kv", default=heads)),
        head_dim=int(head_dim),
        intermediate=int(_first(cfg, "intermediate_size", "n_inner", "ffn_dim", default=4 * hidden)),
        vocab=int(vocab),
        # transformers' llama-family configs default to untied; the key is explicit in most files.
        tie_embeddings=bool(_first(cfg, "tie_word_embeddings", default=False)),
        experts=int(_first(cfg, "num_local_experts", "num_experts", default=1)),
        experts_per_token=int(_first(cfg, "num_experts_per_tok", default=1)),
    )


@dataclass(frozen=True)
class Settings:
    """How one stage trains, as far as memory is concerned."""

    quantization: Quant = "nf4"
    double_quant: bool = True
    compute_bytes: int = 2  # bf16 / fp16 = 2, fp32 = 4
    lora_r: int = 8
    target_modules: tuple[str, ...] = ALL_LINEAR
    lora_dropout: float = 0.05
    lora_bytes: int = 4  # PEFT upcasts adapters to fp32 by default (autocast_adapter_dtype=True)
    micro_batch_size: int = 4
    seq_len: int = 1024
    gradient_checkpointing: bool = True
    optimizer: str = "adamw_torch"
    method: Literal["sft", "dpo"] = "sft"
    attn_implementation: str = "sdpa"
    loss_impl: LossImpl = "fused"
    ddp: bool = False  # DDP keeps a second copy of the gradients in its buckets
    # peft.prepare_model_for_kbit_training (nova calls it for quantized bases) casts every 16-bit
    # parameter left, i.e. embeddings, lm_head and norms, to fp32
    upcast_unquantized: bool = True
    reference_adapter: bool = False  # DPO after SFT in one phase keeps a frozen copy of the adapter
    device: Literal["cuda", "cpu"] = "cuda"  # the CPU has no CUDA context and no caching allocator pool

    @property
    def sequences(self) -> int:
        """Sequences in one forward pass: DPO concatenates chosen and rejected."""
        return self.micro_batch_size * (2 if self.method == "dpo" else 1)

    @property
    def tokens(self) -> int:
        return self.sequences * self.seq_len


@dataclass(frozen=True)
class Constants:
    """The free constants, fitted in ``nova.preflight.calibration`` (see docs/memory.md)."""

    activation_scale: float = 1.0  # multiplies the derived per-layer saved-tensor bytes
    reserve_factor: float = 1.0  # caching allocator: reserved / allocated at the peak
    cuda_context_bytes: int = 600 * MiB  # not in any torch counter; 300-2000 MiB per the sources


# The result of ``nova.preflight.calibration.fit_constants`` on its rows; a test re-runs the fit
# and compares, so a change to the estimator that moves the fit fails until this is updated.
CALIBRATED = Constants(activation_scale=1.02, reserve_factor=1.19)


@dataclass(frozen=True)
class Estimate:
    """A peak-memory estimate: the total and where it goes (bytes)."""

    breakdown: dict[str, int]
    lora_params: int
    settings: Settings
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(self.breakdown.values())

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
                "breakdown": dict(self.breakdown), "lora_params": self.lora_params,
                "micro_batch_size": self.settings.micro_batch_size, "seq_len": self.settings.seq_len,
                "gradient_checkpointing": self.settings.gradient_checkpointing, "notes": list(self.notes)}


def lora_targets(shape: ModelShape, targets: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """The linear layers a target list adapts (matched by module name, as PEFT does)."""
    shapes = shape.linear_shapes()
    return {name: dims for name, dims in shapes.items() if name in targets}


def lora_params(shape: ModelShape, settings: Settings) -> int:
    per_layer = sum(settings.lora_r * (i + o) for i, o in lora_targets(shape, settings.target_modules).values())
    return per_layer * shape.layers


def base_weight_bytes(shape: ModelShape, settings: Settings) -> int:
    """Frozen weights at their stored size."""
    if settings.quantization in ("nf4", "fp4"):
        linear = NF4_DQ_BYTES if settings.double_quant else NF4_BYTES
        other = 4 if settings.upcast_unquantized else settings.compute_bytes
    elif settings.quantization == "int8":
        linear, other = 1.0, 4 if settings.upcast_unquantized else settings.compute_bytes
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


def stream_bytes(settings: Settings) -> int:
    """Bytes per element of the residual stream and the linear layers' inputs and outputs.

    After prepare_model_for_kbit_training the embeddings are fp32, so the residual stream is
    fp32; bitsandbytes layers cast their output back to the input dtype, so the linear
    outputs and the MLP intermediates are fp32 too. Only attention (autocast) runs in 16-bit.
    """
    return 4 if settings.upcast_unquantized and settings.quantization != "none" else settings.compute_bytes


def layer_activation_bytes_per_token(shape: ModelShape, settings: Settings) -> float:
    """Bytes one decoder layer saves for backward, per token (before the fitted scale).

    Counted from what autograd keeps in a HF llama-style layer: the fp32 input of each RMSNorm
    (norms upcast), each linear's input, q/k/v/out of fused attention (k and v at full head
    count after repeat_kv), the SwiGLU gate, its SiLU and up outputs, and, per LoRA layer with
    dropout, the dropped-out copy of the input plus its 1-byte mask.
    """
    d, r = settings.compute_bytes, stream_bytes(settings)
    h, i = shape.hidden, shape.intermediate * shape.experts_per_token
    q = shape.heads * shape.head_dim
    norms = 2 * 4 * h
    linear_inputs = r * (2 * h + q + i)
    attention = d * 4 * q
    if settings.attn_implementation == "eager":
        # explicit scores: fp32 softmax output plus its 16-bit cast, per head per key
        attention += shape.heads * settings.seq_len * (4 + d)
    mlp = r * 3 * i
    lora = 0.0
    for fan_in, _ in lora_targets(shape, settings.target_modules).values():
        if settings.lora_dropout > 0:
            lora += (r + 1) * fan_in
        lora += d * settings.lora_r
    return norms + linear_inputs + attention + mlp + lora


# TRL's fused LM head projects [4096 tokens x 32768 vocab] tiles and never holds the full logits.
FUSED_TOKEN_TILE = 4096
FUSED_VOCAB_TILE = 32768


def logits_bytes(shape: ModelShape, settings: Settings) -> float:
    """Bytes alive for the logits and the loss when the loss is computed.

    * ``hf``: transformers' cross-entropy: 16-bit logits, the fp32 upcast, log-softmax output
      and its fp32 gradient, each vocab x tokens.
    * ``chunked`` (lit-gpt chunked lm_head): about one 16-bit copy of the logits.
    * ``fused`` (TRL >= 1.x SFT/DPO trainers, nova's default): an fp32 copy of the last hidden
      states plus a projection tile and its gradient.
    """
    d, tokens = settings.compute_bytes, settings.tokens
    if settings.loss_impl == "hf":
        return (d + 3 * 4) * shape.vocab * tokens
    if settings.loss_impl == "chunked":
        return d * shape.vocab * tokens
    tile = min(tokens, FUSED_TOKEN_TILE) * min(shape.vocab, FUSED_VOCAB_TILE) * 4
    return 4 * shape.hidden * tokens + 2 * tile


def estimate_memory(config: dict[str, Any], settings: Settings, constants: Constants | None = None) -> Estimate:
    """Peak memory of one training step, with a breakdown (bytes); ``CALIBRATED`` constants by default."""
    return estimate_for_shape(model_shape(config), settings, constants or CALIBRATED)


def estimate_for_shape(shape: ModelShape, settings: Settings, c: Constants) -> Estimate:
    """The estimate for an already read shape (auto-fit calls this once per candidate batch)."""
    n_lora = lora_params(shape, settings)
    weights = base_weight_bytes(shape, settings)
    lora_w = n_lora * settings.lora_bytes
    grads = n_lora * settings.lora_bytes * (2 if settings.ddp else 1)
    optim = int(n_lora * optimizer_bytes_per_param(settings.optimizer, settings.lora_bytes))
    per_layer = layer_activation_bytes_per_token(shape, settings) * c.activation_scale * settings.tokens
    logits = logits_bytes(shape, settings)
    if settings.gradient_checkpointing:
        # each layer's input is kept; backward recomputes one layer at a time (plus its grads in/out)
        checkpoints = stream_bytes(settings) * shape.hidden * shape.layers * settings.tokens
        recompute = per_layer + 2 * stream_bytes(settings) * shape.hidden * settings.tokens
        activations = checkpoints + max(0.0, recompute - logits)
    else:
        activations = per_layer * shape.layers
    dpo_ref = 0.0
    if settings.method == "dpo":
        # Reference log-probs come from a no_grad pass (nova runs it once before training): one
        # layer's working set plus the loss head; it only adds if it exceeds the training peak.
        # A frozen copy of the phase adapter (the stage's starting point) stays resident.
        ref_peak = per_layer + logits
        dpo_ref = max(0.0, ref_peak - activations - logits) + (lora_w if settings.reference_adapter else 0)
    allocated = weights + lora_w + grads + optim + activations + logits + dpo_ref
    breakdown = {
        "base_weights": int(weights), "lora_weights": int(lora_w), "lora_gradients": int(grads),
        "optimizer_states": int(optim), "activations": int(activations), "logits_and_loss": int(logits),
        "dpo_reference": int(dpo_ref), "allocator_overhead": 0, "cuda_context": 0,
    }
    notes = []
    if settings.upcast_unquantized and settings.quantization != "none":
        notes.append("embeddings, lm_head and norms in fp32 and an fp32 residual stream "
                     "(prepare_model_for_kbit_training)")
    if settings.method == "dpo":
        notes.append(f"DPO: chosen and rejected in one batch ({settings.sequences} sequences per micro batch)")
    if settings.device == "cuda":
        breakdown["allocator_overhead"] = int(allocated * (c.reserve_factor - 1))
        breakdown["cuda_context"] = int(c.cuda_context_bytes)
    return Estimate(breakdown, n_lora, settings, notes)


def with_batch(settings: Settings, micro_batch_size: int, gradient_checkpointing: bool) -> Settings:
    return replace(settings, micro_batch_size=micro_batch_size, gradient_checkpointing=gradient_checkpointing)
