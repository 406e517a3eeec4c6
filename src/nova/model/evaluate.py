"""Holdout loss of a causal LM on tokenized examples (``input_ids`` and ``labels``).

One loop for everything that scores a model on held-out data after training: ``nova infer
--eval`` and the forgetting table (each earlier phase's holdout on the new composition). The
loss is the mean negative log-likelihood per trained token, the same quantity the trainer's
``eval_loss`` reports, so figures from either place compare.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nova.lazy import require
from nova.model.head import IGNORE, head_settings, scored_hidden_states, summed_nll

EVAL_BATCH_TOKENS = 4096  # padded tokens per forward: bounded memory whatever the holdout size


@dataclass(frozen=True)
class HoldoutLoss:
    """Mean loss over ``tokens`` trained tokens of ``examples`` sequences."""

    eval_loss: float
    tokens: int
    examples: int

    def to_dict(self) -> dict[str, Any]:
        return {"eval_loss": round(self.eval_loss, 6), "tokens": self.tokens, "examples": self.examples}


def _batches(rows: list[tuple[list[int], list[int]]]) -> list[list[tuple[list[int], list[int]]]]:
    """Length-sorted batches of at most EVAL_BATCH_TOKENS padded tokens (a longer row goes alone)."""
    batches: list[list[tuple[list[int], list[int]]]] = []
    current: list[tuple[list[int], list[int]]] = []
    for row in sorted(rows, key=lambda r: len(r[0])):
        if current and len(row[0]) * (len(current) + 1) > EVAL_BATCH_TOKENS:
            batches.append(current)
            current = []
        current.append(row)
    if current:
        batches.append(current)
    return batches


def holdout_loss(model: Any, dataset: Any, pad_token_id: int) -> HoldoutLoss | None:
    """Token-weighted mean NLL of ``model`` on ``dataset``; None when nothing in it is trained.

    The model is put in eval mode (dropout off) for the pass and given back in the mode it had.
    """
    torch = require("torch")
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    scale, softcap = head_settings(causal_lm)
    rows = [(list(r["input_ids"]), list(r["labels"])) for r in dataset]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for batch in _batches(rows):
                width = max(len(ids) for ids, _ in batch)
                ids = torch.tensor([r[0] + [pad_token_id] * (width - len(r[0])) for r in batch], device=device)
                labels = torch.tensor([r[1] + [IGNORE] * (width - len(r[1])) for r in batch], device=device)
                mask = torch.tensor([[1] * len(r[0]) + [0] * (width - len(r[0])) for r in batch], device=device)
                hidden, targets, head = scored_hidden_states(causal_lm, {"input_ids": ids, "attention_mask": mask},
                                                             labels)
                total += float(summed_nll(hidden, targets, head, scale, softcap))
                count += int(targets.numel())
    finally:
        model.train(was_training)
    if count == 0:
        return None
    return HoldoutLoss(total / count, count, len(rows))
