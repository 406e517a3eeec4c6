"""The SFT loss, computed only where it is trained: the LM head runs on labelled positions only.

A causal LM's forward projects every position onto the whole vocabulary (49k-150k columns) and
keeps those logits for backward. In SFT most positions carry no loss: prompts, system text and,
in padded batches, padding. Here the backbone runs as usual, the hidden states of the positions
whose next token is trained are gathered, and only they go through the LM head and the
cross-entropy. TRL's fused head does the same on Triton GPUs but scores every position elsewhere
(CPU included) to keep tile shapes static for compilers; nova always gathers.

Normalization: the summed negative log-likelihood is divided by ``num_items_in_batch``, the
number of trained tokens over the whole gradient-accumulation window (the HF Trainer counts it
before the window starts). So micro batch 1 x accumulation 4 gives the same update as micro
batch 4 x accumulation 1, and a packed batch the same as a padded one.

Small problems are projected at once (one matmul, PyTorch's fused cross-entropy); large ones
(tokens x vocab above ``DIRECT_MAX_ELEMENTS``) go through TRL's chunked log-prob kernel, which
never holds more than a tile of logits and recomputes tiles in backward.
"""

from __future__ import annotations

from typing import Any

from nova.lazy import require

IGNORE = -100
# Kept positions x vocabulary at or below this are projected in one matmul: 64M fp32 logits are
# 256 MiB (plus their gradient); above it the chunked kernel keeps memory flat.
DIRECT_MAX_ELEMENTS = 64 * 1024 * 1024
CHUNK_VOCAB = 32768


def _head_settings(model: Any) -> tuple[float, float | None]:
    """(logit scale, final softcap) of models that transform their logits (Gemma 2, Cohere, Granite)."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    scale = getattr(cfg, "logit_scale", None)
    if scale is None and getattr(cfg, "logits_scaling", None):
        scale = 1 / cfg.logits_scaling
    return (1.0 if scale is None else float(scale)), getattr(cfg, "final_logit_softcapping", None)


def _trained_hidden_states(causal_lm: Any, inputs: dict[str, Any], labels: Any) -> tuple[Any, Any, Any]:
    """(hidden states of trained positions [N, H], their next-token targets [N], the LM head module)."""
    hidden = causal_lm.base_model(**inputs, use_cache=False).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    mask = targets != IGNORE
    head = causal_lm.get_output_embeddings()
    return hidden[mask].to(head.weight.device), targets[mask].to(head.weight.device), head


def summed_nll(hidden: Any, targets: Any, head: Any, scale: float, softcap: float | None) -> Any:
    """The summed negative log-likelihood of ``targets`` under ``head(hidden)``."""
    torch = require("torch")
    if hidden.shape[0] * head.weight.shape[0] > DIRECT_MAX_ELEMENTS:
        from trl.kernels import ChunkedLogProbFunction

        log_probs = ChunkedLogProbFunction.apply(hidden, head.weight, head.bias, targets, 1.0, CHUNK_VOCAB, softcap,
                                                 scale, ("log_probs",))[0]
        return -log_probs.sum()
    logits = head(hidden)
    if scale != 1.0:
        logits = logits * scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")


def install_sft_loss(causal_lm: Any) -> None:
    """Give the causal LM a forward mode that returns only the SFT loss: ``model(..., nova_sft_loss=True)``.

    The loss is computed inside the model's own forward (as TRL's fused head is), so every wrapper
    around the model (PEFT, DDP, FSDP, DeepSpeed) sees a normal forward call: DDP's gradient
    all-reduce and FSDP's gathers work as for any other loss. Without the flag the forward is the
    one it was (generation and evaluation are unchanged). Installing twice is harmless.
    """
    if getattr(causal_lm, "_nova_sft_loss", False):
        return
    import functools
    import types

    original = causal_lm.forward
    outputs = require("transformers").modeling_outputs
    scale, softcap = _head_settings(causal_lm)

    @functools.wraps(type(causal_lm).forward)
    def forward(self: Any, *args: Any, nova_sft_loss: bool = False, labels: Any = None,
                num_items_in_batch: Any = None, **kwargs: Any) -> Any:
        if not nova_sft_loss:
            extra = {k: v for k, v in (("labels", labels), ("num_items_in_batch", num_items_in_batch)) if v is not None}
            return original(*args, **kwargs, **extra)
        inputs = {k: v for k, v in kwargs.items() if k in ("input_ids", "attention_mask", "position_ids")}
        hidden, targets, head = _trained_hidden_states(self, inputs, labels)
        total = summed_nll(hidden, targets, head, scale, softcap)
        count = num_items_in_batch if num_items_in_batch is not None else targets.numel()
        torch = require("torch")
        return outputs.CausalLMOutputWithPast(loss=total / torch.as_tensor(count, device=total.device).clamp(min=1))

    causal_lm.forward = types.MethodType(forward, causal_lm)
    causal_lm._nova_sft_loss = True


def sft_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
    """Mean NLL over the trained tokens of the accumulation window (``num_items_in_batch``), or of this batch.

    ``model`` is what the trainer holds (a PeftModel, possibly wrapped by DDP/FSDP): the call goes
    through every wrapper's forward.
    """
    inner = model.module if hasattr(model, "module") else model
    causal_lm = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    install_sft_loss(causal_lm)
    kwargs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids", "labels")}
    return model(**kwargs, nova_sft_loss=True, num_items_in_batch=num_items_in_batch).loss
