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

from dataclasses import dataclass
from typing import Any

from nova.lazy import require
from nova.model.head import IGNORE, head_settings, logits_of, scored_hidden_states, summed_nll

KL_CHUNK_ELEMENTS = 16 * 1024 * 1024  # positions x vocabulary per KL slice (two fp32 copies live at once)


@dataclass(frozen=True)
class StartModel:
    """How the KL term reaches the phase's start composition: the PeftModel and the adapters that
    make it up (this phase's adapter off), with its weight in the loss."""

    peft_model: Any
    adapters: tuple[str, ...]
    weight: float


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
    scale, softcap = head_settings(causal_lm)

    @functools.wraps(type(causal_lm).forward)
    def forward(self: Any, *args: Any, nova_sft_loss: bool = False, labels: Any = None,
                num_items_in_batch: Any = None, nova_kl_mask: Any = None, **kwargs: Any) -> Any:
        if not nova_sft_loss:
            extra = {k: v for k, v in (("labels", labels), ("num_items_in_batch", num_items_in_batch)) if v is not None}
            return original(*args, **kwargs, **extra)
        inputs = {k: v for k, v in kwargs.items() if k in ("input_ids", "attention_mask", "position_ids")}
        hidden, targets, head = scored_hidden_states(self, inputs, labels)
        total = summed_nll(hidden, targets, head, scale, softcap)
        start: StartModel | None = getattr(self, "_nova_start_model", None)
        if start is not None and nova_kl_mask is not None:
            selected = nova_kl_mask[:, 1:][labels[:, 1:] != IGNORE].bool().to(hidden.device)
            if bool(selected.any()):
                kl = kl_to_start(self, start, inputs, labels, hidden[selected], selected, (head, scale, softcap))
                total = total + start.weight * kl
        count = num_items_in_batch if num_items_in_batch is not None else targets.numel()
        torch = require("torch")
        return outputs.CausalLMOutputWithPast(loss=total / torch.as_tensor(count, device=total.device).clamp(min=1))

    causal_lm.forward = types.MethodType(forward, causal_lm)
    causal_lm._nova_sft_loss = True


def kl_to_start(causal_lm: Any, start: StartModel, inputs: dict[str, Any], labels: Any, hidden: Any,
                selected: Any, head_args: tuple[Any, float, float | None]) -> Any:
    """Summed KL(start || current) over the next-token distributions at ``selected`` trained positions.

    The start composition runs without gradients on the same batch, with this phase's adapter
    switched off (nova.model.adapters.active_adapters), so no second model is held. The sum is
    normalized with the NLL (by the window's trained-token count), so ``weight`` 1 weighs a replayed
    token's KL like its cross-entropy.
    """
    torch = require("torch")
    from nova.model.adapters import active_adapters

    head, scale, softcap = head_args
    with torch.no_grad(), active_adapters(start.peft_model, list(start.adapters)):
        reference = scored_hidden_states(causal_lm, inputs, labels)[0][selected]
    step = max(1, KL_CHUNK_ELEMENTS // head.weight.shape[0])
    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, hidden.shape[0], step):
        with torch.no_grad():
            ref_logp = torch.log_softmax(logits_of(reference[i:i + step], head, scale, softcap), dim=-1)
        cur_logp = torch.log_softmax(logits_of(hidden[i:i + step], head, scale, softcap), dim=-1)
        total = total + (ref_logp.exp() * (ref_logp - cur_logp)).sum()
    return total


def attach_start_model(causal_lm: Any, start: StartModel | None) -> None:
    """Turn the KL term on (or off, None) for ``causal_lm``'s SFT loss forward."""
    causal_lm._nova_start_model = start


def sft_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
    """Mean NLL over the trained tokens of the accumulation window (``num_items_in_batch``), or of this batch.

    ``model`` is what the trainer holds (a PeftModel, possibly wrapped by DDP/FSDP): the call goes
    through every wrapper's forward.
    """
    inner = model.module if hasattr(model, "module") else model
    causal_lm = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    install_sft_loss(causal_lm)
    kwargs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids", "labels")}
    if inputs.get("replay_mask") is not None:
        kwargs["nova_kl_mask"] = inputs["replay_mask"]
    return model(**kwargs, nova_sft_loss=True, num_items_in_batch=num_items_in_batch).loss
