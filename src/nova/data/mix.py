"""Dedup, holdout split, leakage removal and source mixing, on validated examples.

All choices are seeded and order-stable: the same files and seed give the same split on every
machine, and a record's side of the holdout depends only on its own content (a hash), not on
which other records happen to be in the file.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict

from nova.config.data_schema import DataConfig
from nova.data.load import Example
from nova.data.report import DataReport
from nova.errors import DataError, Problem


def dedup(examples: list[Example]) -> tuple[list[Example], int]:
    """Keep the first of each group of identical examples (after whitespace normalization)."""
    seen: set[str] = set()
    out = []
    for ex in examples:
        if ex.key not in seen:
            seen.add(ex.key)
            out.append(ex)
    return out, len(examples) - len(out)


def holdout(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example], str]:
    """Hold out ``fraction`` of the examples: those whose seeded content hash ranks lowest."""
    n = len(examples)
    if fraction <= 0:
        return examples, [], "none (eval_split is 0)"
    if n < 2:
        return examples, [], f"none (only {n} record; eval_split needs at least 2)"
    n_eval = min(max(1, round(n * fraction)), n - 1)
    ranked = sorted(range(n), key=lambda i: hashlib.sha1(f"{seed}:{examples[i].key}".encode()).hexdigest())
    held = set(ranked[:n_eval])
    train = [ex for i, ex in enumerate(examples) if i not in held]
    evals = [ex for i, ex in enumerate(examples) if i in held]
    return train, evals, f"eval_split {fraction} (seed {seed}): {len(evals)} held out"


def remove_leakage(train: list[Example], evals: list[Example]) -> tuple[list[Example], int]:
    """Drop eval examples that also appear in train: scoring the model on what it trained on
    would overstate how well it generalizes."""
    train_keys = {ex.key for ex in train}
    kept = [ex for ex in evals if ex.key not in train_keys]
    return kept, len(evals) - len(kept)


def mix(train: list[Example], cfg: DataConfig, seed: int, report: DataReport) -> list[Example]:
    """Apply per-source weights (shares of the mix), the reasoning ratio and the global max_samples cap."""
    rng = random.Random(seed)
    if any(spec.weight is not None for spec in cfg.datasets):
        train = _weighted(train, cfg, rng, report)
    if cfg.reasoning_ratio is not None:
        train = _reasoning_ratio(train, cfg.reasoning_ratio, rng, report)
    if cfg.max_samples is not None and len(train) > cfg.max_samples:
        keep = sorted(rng.sample(range(len(train)), cfg.max_samples))
        report.capped = len(train) - cfg.max_samples
        train = [train[i] for i in keep]
    return train


def _weighted(train: list[Example], cfg: DataConfig, rng: random.Random, report: DataReport) -> list[Example]:
    """Each source gets ``weight / sum(weights)`` of the records (a source without weight counts
    as 1): repeated when it has fewer, sampled when it has more."""
    groups: dict[int, list[Example]] = defaultdict(list)
    for ex in train:
        groups[ex.source].append(ex)
    weights = {i: spec.weight or 1.0 for i, spec in enumerate(cfg.datasets) if groups.get(i)}
    total, total_weight = len(train), sum(weights.values())
    out: list[Example] = []
    for index, weight in weights.items():
        part, repeated, left_out = _resize(groups[index], max(1, round(total * weight / total_weight)), rng)
        out += part
        report.weight_repeated += repeated
        report.weight_subsampled += left_out
    return out


def _reasoning_ratio(train: list[Example], ratio: float, rng: random.Random, report: DataReport) -> list[Example]:
    """Hold the share of chats with reasoning at ``ratio`` (same total): a model tuned on a hybrid
    model's data keeps both modes only when both are well represented."""
    thinking = [ex for ex in train if ex.example.get("reasoning")]
    plain = [ex for ex in train if not ex.example.get("reasoning")]
    if not thinking or not plain:
        missing = "with reasoning" if not thinking else "without reasoning"
        raise DataError(f"data.reasoning_ratio {ratio} needs both kinds of chats, but there are none {missing}",
                        [Problem("data.reasoning_ratio", f"{len(thinking)} chats with reasoning, {len(plain)} without",
                                 "add the missing kind of data, or remove reasoning_ratio")])
    target = min(max(1, round(len(train) * ratio)), len(train) - 1)
    out: list[Example] = []
    for group, size in ((thinking, target), (plain, len(train) - target)):
        part, repeated, left_out = _resize(group, size, rng)
        out += part
        report.ratio_repeated += repeated
        report.ratio_subsampled += left_out
    return out


def _resize(group: list[Example], target: int, rng: random.Random) -> tuple[list[Example], int, int]:
    """``target`` records of ``group``: all of it repeated (the rest sampled) when it has fewer, a
    sorted sample when it has more; (records, repeated, left out)."""
    if target >= len(group):
        extra = target - len(group)
        copies, rest = divmod(extra, len(group))
        return group * (copies + 1) + [group[i] for i in sorted(rng.sample(range(len(group)), rest))], extra, 0
    return [group[i] for i in sorted(rng.sample(range(len(group)), target))], 0, len(group) - target
