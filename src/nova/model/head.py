"""The LM head on chosen positions only: scale, softcap and the summed negative log-likelihood.

A causal LM's forward projects every position onto the whole vocabulary (49k-150k columns). The
training loss (nova.train.methods.loss) and holdout scoring (nova.model.evaluate) only need the positions
whose next token is scored, so both gather those hidden states and project them here, with the
model's own logit transforms (Gemma 2's softcap, Cohere's and Granite's scaling).
"""

from __future__ import annotations

from typing import Any

from nova.lazy import require

IGNORE = -100
# Kept positions x vocabulary at or below this are projected in one matmul: 64M fp32 logits are
# 256 MiB (plus their gradient); above it the chunked kernel keeps memory flat.
DIRECT_MAX_ELEMENTS = 64 * 1024 * 1024
CHUNK_VOCAB = 32768


def head_settings(model: Any) -> tuple[float, float | None]:
    """(logit scale, final softcap) of models that transform their logits (Gemma 2, Cohere, Granite)."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    scale = getattr(cfg, "logit_scale", None)
    if scale is None and getattr(cfg, "logits_scaling", None):
        scale = 1 / cfg.logits_scaling
    return (1.0 if scale is None else float(scale)), getattr(cfg, "final_logit_softcapping", None)


def scored_hidden_states(causal_lm: Any, inputs: dict[str, Any], labels: Any) -> tuple[Any, Any, Any]:
    """(hidden states of scored positions [N, H], their next-token targets [N], the LM head module)."""
    hidden = causal_lm.base_model(**inputs, use_cache=False).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    mask = targets != IGNORE
    head = causal_lm.get_output_embeddings()
    return hidden[mask].to(head.weight.device), targets[mask].to(head.weight.device), head


def logits_of(hidden: Any, head: Any, scale: float, softcap: float | None) -> Any:
    """The model's logits for ``hidden`` (its scale and softcap applied), in float32."""
    torch = require("torch")
    logits = head(hidden)
    if scale != 1.0:
        logits = logits * scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return logits.float()


def summed_nll(hidden: Any, targets: Any, head: Any, scale: float, softcap: float | None) -> Any:
    """The summed negative log-likelihood of ``targets`` under ``head(hidden)``."""
    torch = require("torch")
    if hidden.shape[0] * head.weight.shape[0] > DIRECT_MAX_ELEMENTS:
        from trl.kernels import ChunkedLogProbFunction

        log_probs = ChunkedLogProbFunction.apply(hidden, head.weight, head.bias, targets, 1.0, CHUNK_VOCAB, softcap,
                                                 scale, ("log_probs",))[0]
        return -log_probs.sum()
    return torch.nn.functional.cross_entropy(logits_of(hidden, head, scale, softcap), targets, reduction="sum")
