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
    """Collates tokenized examples (``input_ids``, ``labels``) into one micro batch.

    ``max_row_tokens`` bounds a padding-free row: attention kernels that take an explicit mask
    (SDPA, eager) score every pair of positions in a row, so sequences are packed into rows of at
    most that many tokens (each sequence whole; one longer than the cap gets its own row), and the
    shorter rows are filled with padding that forms its own position-id block (it never touches a
    real token). None (flash-attention varlen) keeps the whole micro batch in one row.
    """

    pad_token_id: int
    padding_free: bool
    max_row_tokens: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        ids = [list(f["input_ids"]) for f in features]
        labels = [_first_label_ignored(f["labels"]) for f in features]
        batch = self._packed(ids, labels) if self.padding_free else self._padded(ids, labels)
        if "replay" in features[0]:  # retention.kl_weight: mark the replayed sequences' tokens
            marks = [[int(f["replay"])] * len(row) for f, row in zip(features, ids, strict=True)]
            layout = self._packed(ids, marks, fill=0) if self.padding_free else self._padded(ids, marks, fill=0)
            batch["replay_mask"] = layout["labels"]
        return batch

    def _rows(self, ids: list[list[int]]) -> list[list[int]]:
        """Which sequences share a row: first fit, longest first (fewest rows, so least padding); the
        order within a micro batch does not change its summed loss."""
        if self.max_row_tokens is None:
            return [list(range(len(ids)))]
        rows: list[list[int]] = []
        used: list[int] = []
        for i in sorted(range(len(ids)), key=lambda k: -len(ids[k])):
            n = len(ids[i])
            slot = next((r for r, u in enumerate(used) if u + n <= self.max_row_tokens), None)
            if slot is None:
                rows.append([i])
                used.append(n)
            else:
                rows[slot].append(i)
                used[slot] += n
        return rows

    def _packed(self, ids: list[list[int]], labels: list[list[int]], fill: int = IGNORE) -> dict[str, Any]:
        torch = require("torch")
        rows = self._rows(ids)
        width = max(sum(len(ids[i]) for i in row) for row in rows)
        out_ids, out_labels, out_pos = [], [], []
        for row in rows:
            tokens = [t for i in row for t in ids[i]]
            pad = width - len(tokens)
            out_ids.append(tokens + [self.pad_token_id] * pad)
            out_labels.append([t for i in row for t in labels[i]] + [fill] * pad)
            out_pos.append([p for i in row for p in range(len(ids[i]))] + list(range(pad)))
        return {"input_ids": torch.tensor(out_ids), "labels": torch.tensor(out_labels),
                "position_ids": torch.tensor(out_pos)}

    def _padded(self, ids: list[list[int]], labels: list[list[int]], fill: int = IGNORE) -> dict[str, Any]:
        torch = require("torch")
        longest = max(len(row) for row in ids)
        return {
            "input_ids": torch.tensor([row + [self.pad_token_id] * (longest - len(row)) for row in ids]),
            "labels": torch.tensor([row + [fill] * (longest - len(row)) for row in labels]),
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
