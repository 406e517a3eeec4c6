"""Streaming: a stage's data read, checked, split and tokenized one record at a time (``data.streaming``).

The in-memory path (``nova.data.pipeline._assemble``) holds every record before it dedups, splits
and mixes. Streaming holds one encode batch (bounded by ``data.stream_buffer_mb``) and per record
only what its decisions need: an 8-byte hash for dedup (and, with eval_datasets, for leakage).
Each record's side is decided by itself alone, so nothing needs the whole set:

- dedup keeps the first of identical records, as in memory;
- ``eval_split`` holds out a record when its seeded content hash falls in the lowest ``eval_split``
  of the hash range (the in-memory split holds out exactly ``round(n * eval_split)``; streaming's
  share is ``eval_split`` up to sampling noise, and the report gives the count);
- ``eval_datasets`` are read first (they are held in memory: keep them small), and those that also
  appear in the training data are removed after it was read, as in memory.
Source weights, ``reasoning_ratio`` and the global ``max_samples`` resample the whole set and are
refused with streaming (the config says so). Counts are the same as in memory and are said as
they are reached.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nova.config.data_schema import DataConfig
from nova.data.load import Example, LoadContext, iter_sources, load_sources
from nova.data.records import apply_columns, detect_format
from nova.data.report import DataReport
from nova.data.sources import FileProblem, listing, peek_record

_SAY_EVERY = 30.0  # seconds between "records read so far" lines


def digest(key: str) -> int:
    """The first 8 bytes of a record's content key: what dedup and leakage keep per record."""
    return int(key[:16], 16)


def held_out(key: str, fraction: float, seed: int) -> bool:
    """Whether a record belongs to the holdout, from its own content and the seed alone."""
    if fraction <= 0:
        return False
    h = hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()
    return int(h[:15], 16) < fraction * 16**15


def stream_examples(cfg: DataConfig, ctx: LoadContext, seed: int, doing: Any = None) -> Iterator[tuple[str, Example]]:
    """("train" | "eval", example) for every record that survives dedup, split and leakage, in file order;
    ``ctx.report`` holds the counts of what was read, complete when the iterator is exhausted."""
    report = ctx.report
    evals = load_sources(list(cfg.eval_datasets), ctx, eval_side=True) if cfg.eval_datasets else []
    eval_keys: dict[int, int] = {}
    if evals:
        kept = []
        for ex in evals:
            if digest(ex.key) not in eval_keys:
                eval_keys[digest(ex.key)] = len(kept)
                kept.append(ex)
        report.eval_deduplicated = len(evals) - len(kept)
        evals = kept
    seen: set[int] = set()
    leaked: set[int] = set()
    held = 0
    said = time.time()
    for ex in iter_sources(list(cfg.datasets), ctx):
        d = digest(ex.key)
        if cfg.dedup:
            if d in seen:
                report.deduplicated += 1
                continue
            seen.add(d)
        if d in eval_keys:
            leaked.add(d)
        if not cfg.eval_datasets and held_out(ex.key, cfg.eval_split, seed):
            held += 1
            yield "eval", ex
        else:
            yield "train", ex
        if doing is not None and time.time() - said >= _SAY_EVERY:
            said = time.time()
            doing.note(f"streaming: {report.read} records read, {sum(report.skipped.values())} skipped so far")
    if cfg.eval_datasets:
        report.leakage_removed = len(leaked)
        kept_evals = [ex for ex in evals if digest(ex.key) not in leaked]
        report.split = f"eval_datasets: {len(kept_evals)} records"
        for ex in kept_evals:
            yield "eval", ex
    elif cfg.eval_split <= 0:
        report.split = "none (eval_split is 0)"
    else:
        report.split = f"eval_split {cfg.eval_split} (seed {seed}, streaming: by each record's hash): {held} held out"


def needs_template(cfg: DataConfig) -> bool:
    """Whether a source holds chats (a chat template renders them), from each file's first record: streaming
    cannot look at every record before it tokenizes the first. A file that cannot be peeked counts as chats."""
    for spec in [*cfg.datasets, *cfg.eval_datasets]:
        if spec.format != "auto":
            if spec.format != "text":
                return True
            continue
        try:
            files = listing(Path(spec.path).expanduser(), spec.ignore).files
        except FileProblem:
            continue  # reported when the source is read
        for file in files:
            try:
                first = peek_record(file)
            except (FileProblem, OSError):
                return True
            if first is None:
                continue
            if detect_format(apply_columns(first, spec.columns)) != "text":
                return True
    return False


def example_chars(value: Any) -> int:
    """The text an example holds, in characters: what bounds a streaming batch's memory."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(example_chars(v) for v in value.values())
    if isinstance(value, list):
        return sum(example_chars(v) for v in value)
    return 8


def count_examples(report: DataReport, side: str, ex: Example, feedback: bool) -> None:
    """The mix counts the in-memory path takes from its lists, taken one record at a time."""
    if side != "train":
        return
    if ex.example.get("reasoning"):
        report.reasoning_examples += 1
    else:
        report.plain_examples += 1
    if feedback:
        if ex.example["label"]:
            report.desirable += 1
        else:
            report.undesirable += 1
