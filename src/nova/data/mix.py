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
    """Apply per-source weights (shares of the mix) and the global max_samples cap."""
    rng = random.Random(seed)
    if any(spec.weight is not None for spec in cfg.datasets):
        train = _weighted(train, cfg, rng, report)
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
        group = groups[index]
        target = max(1, round(total * weight / total_weight))
        if target >= len(group):
            extra = target - len(group)
            copies, rest = divmod(extra, len(group))
            out += group * (copies + 1) + [group[i] for i in sorted(rng.sample(range(len(group)), rest))]
            report.weight_repeated += extra
        else:
            out += [group[i] for i in sorted(rng.sample(range(len(group)), target))]
            report.weight_subsampled += len(group) - target
    return out
