"""How SFT examples become micro batches: padding-free packing (exact), padding, token budgets.

Padding-free: the sequences of a micro batch are concatenated into one row, with ``position_ids``
restarting at 0 for each sequence and no attention mask. transformers (5.x) then builds a
block-diagonal causal mask from the position ids (``masking_utils.find_packed_sequence_indices``;
flash-attention varlen derives the same boundaries), so no token attends across a sequence
boundary and no compute is spent on padding. The first label of every sequence is -100 in both
modes: it is never predicted (nothing comes before it), and in a packed row it would otherwise
be "predicted" from the previous sequence's last token.

Whether a model really isolates packed sequences is not assumed: ``packing_is_exact`` runs the
model once on two short sequences, packed and one by one, and compares the logits. Where they
differ (an attention kernel or architecture that ignores position-id boundaries), nova pads.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from nova.lazy import require

IGNORE = -100
# Packed and one-by-one logits of the probe must agree this closely (relative to the logits' scale):
# float reordering gives ~1e-6 in fp32 and ~1e-2 in bf16; a sequence that sees its neighbour differs by O(1).
OPEN_BATCHES = 64  # first fit looks at this many of the newest batches (linear time on large sets)
PROBE_TOLERANCE = {"float32": 1e-3, "bfloat16": 5e-2, "float16": 5e-2}


def _first_label_ignored(labels: Sequence[int]) -> list[int]:
    out = list(labels)
    if out:
        out[0] = IGNORE
    return out


@dataclass
class SFTCollator:
    """Collates tokenized examples (``input_ids``, ``labels``) into one micro batch."""

    pad_token_id: int
    padding_free: bool

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        torch = require("torch")
        ids = [list(f["input_ids"]) for f in features]
        labels = [_first_label_ignored(f["labels"]) for f in features]
        if self.padding_free:
            positions = [p for row in ids for p in range(len(row))]
            return {"input_ids": torch.tensor([[t for row in ids for t in row]]),
                    "labels": torch.tensor([[t for row in labels for t in row]]),
                    "position_ids": torch.tensor([positions])}
        longest = max(len(row) for row in ids)
        return {
            "input_ids": torch.tensor([row + [self.pad_token_id] * (longest - len(row)) for row in ids]),
            "labels": torch.tensor([row + [IGNORE] * (longest - len(row)) for row in labels]),
            "attention_mask": torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in ids]),
        }


def packing_is_exact(model: Any, vocab_size: int, dtype_name: str) -> tuple[bool, float]:
    """Run ``model`` on two short sequences packed into one row and one by one; (equal?, max abs diff).

    Dropout is off for the probe (eval mode) and it runs without gradients; the model's mode is
    restored after.
    """
    torch = require("torch")
    generator = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    seqs = [torch.randint(3, max(vocab_size, 4), (n,), generator=generator).to(device) for n in (7, 5)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            alone = [model(input_ids=s[None], use_cache=False).logits[0].float() for s in seqs]
            positions = torch.cat([torch.arange(len(s), device=device) for s in seqs])[None]
            packed = model(input_ids=torch.cat(seqs)[None], position_ids=positions, use_cache=False).logits[0].float()
    finally:
        model.train(was_training)
    reference = torch.cat(alone)
    diff = float((packed - reference).abs().max())
    scale = float(reference.abs().max()) or 1.0
    return diff <= PROBE_TOLERANCE.get(dtype_name, 5e-2) * scale, diff


class TokenBudgetBatchSampler:
    """Micro batches filled up to a token budget instead of a fixed number of sequences.

    The batches are made once, from a seeded permutation (first fit among the last few open
    batches: each sequence goes into the first of them it fits), so their number is the same every
    epoch; each epoch shuffles their order.
    In padded mode a batch costs its longest sequence times its size, in padding-free mode the sum
    of its lengths. A sequence longer than the budget gets a batch of its own.
    """

    def __init__(self, lengths: Sequence[int], max_tokens: int, *, seed: int, padding_free: bool) -> None:
        self.max_tokens = max_tokens
        self.seed = seed
        self.epoch = 0
        order = list(range(len(lengths)))
        random.Random(seed).shuffle(order)
        batches: list[list[int]] = []
        costs: list[tuple[int, int]] = []  # (tokens, longest) per batch
        for i in order:
            n = lengths[i]
            for b in range(max(0, len(costs) - OPEN_BATCHES), len(costs)):
                tokens, longest = costs[b]
                cost = tokens + n if padding_free else max(longest, n) * (len(batches[b]) + 1)
                if cost <= max_tokens:
                    batches[b].append(i)
                    costs[b] = (tokens + n, max(longest, n))
                    break
            else:
                batches.append([i])
                costs.append((n, n))
        self.batches = batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        order = list(range(len(self.batches)))
        random.Random(self.seed * 1000 + self.epoch).shuffle(order)
        return iter([self.batches[i] for i in order])

    def __len__(self) -> int:
        return len(self.batches)

    def summary(self) -> dict[str, float]:
        sizes = [len(b) for b in self.batches]
        return {"max_tokens_per_batch": self.max_tokens, "batches_per_epoch": len(sizes),
                "sequences_per_batch_mean": round(sum(sizes) / max(len(sizes), 1), 2),
                "sequences_per_batch_min": min(sizes, default=0), "sequences_per_batch_max": max(sizes, default=0)}
