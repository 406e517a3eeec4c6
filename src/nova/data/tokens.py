"""Tokenize one side (train or eval) of a stage's data as its examples come, batch by batch.

``SideTokenizer`` takes examples one at a time (from a list, or from a stream of files larger
than memory), encodes them in batches, folds each batch's bookkeeping (problems, drops, token
statistics) into a ``TokenFold`` and appends the kept rows' token columns to the current shard
(``nova.data.shards``). A shard already finished by a killed earlier run is not encoded again:
its saved fold is merged and its examples are passed over. The fold is additive, so a resumed
tokenization reports exactly what one uninterrupted pass reports.
"""

from __future__ import annotations

import json
import uuid
from array import array
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from nova.data.encode import IGNORE, NO_TRAINED, TOO_LONG, TRUNCATED, Encoder
from nova.data.load import Example
from nova.data.report import DataReport, TokenStats
from nova.data.shards import ShardStore, ShardWriter
from nova.errors import Problem

HELPERS = ("where", "row", "length", "trained", "masked", "status", "prompt_cut", "completion_cut", "reasoning",
           "per_turn", "empty_think")
_MAP_BATCH = 1000  # datasets.map batches (worker processes)
_COUNTERS = ("dropped_too_long", "dropped_no_trained", "truncated", "prompt_truncated", "completion_truncated",
             "per_turn_chats", "per_turn_sequences", "empty_think_masked")
_SUMS = ("trained", "masked", "reasoning_sequences", "reasoning_trained", "kept")


@dataclass
class TokenFold:
    """What tokenizing some rows found: problems in order, drop counts, and the sums and lengths behind
    TokenStats. Merging folds of consecutive shards equals folding their rows in one pass."""

    problems: list[tuple[str, str, str, str | None]] = field(default_factory=list)  # reason, where, message, hint
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTERS + _SUMS, 0))
    lengths: array = field(default_factory=lambda: array("q"))  # of every measured row (not the failed ones)
    reasoning: bool = False  # SFT rows carry the reasoning columns

    def add(self, cols: dict[str, list[Any]]) -> list[int]:
        """Fold one encoded batch; the indices of its kept rows."""
        c = self.counts
        keep = []
        for i, s in enumerate(cols["status"]):
            if s.startswith("error:"):
                _, reason, message = s.split(":", 2)
                message, _, hint = message.partition("\x1f")
                self.problems.append((reason, cols["where"][i], message, hint or None))
                continue
            self.lengths.append(cols["length"][i])
            if s == TOO_LONG:
                c["dropped_too_long"] += 1
            elif s == NO_TRAINED:  # truncation cut off every trained token: as good as too long
                c["dropped_no_trained"] += 1
            else:
                keep.append(i)
                c["truncated"] += s == TRUNCATED
        c["kept"] += len(keep)
        c["trained"] += sum(cols["trained"][i] for i in keep)
        c["masked"] += sum(cols["masked"][i] for i in keep)
        if "prompt_cut" in cols:
            c["prompt_truncated"] += sum(1 for i in keep if cols["prompt_cut"][i])
            c["completion_truncated"] += sum(1 for i in keep if cols["completion_cut"][i])
        if "reasoning" in cols:  # SFT: the thinking/plain mix, chats rendered turn by turn, empty think blocks
            self.reasoning = True
            c["reasoning_sequences"] += sum(1 for i in keep if cols["reasoning"][i])
            c["reasoning_trained"] += sum(cols["trained"][i] for i in keep if cols["reasoning"][i])
            c["per_turn_chats"] += sum(1 for n in cols["per_turn"] if n)
            c["per_turn_sequences"] += sum(cols["per_turn"])
            c["empty_think_masked"] += sum(cols["empty_think"][i] for i in keep)
        return keep

    def merge(self, other: TokenFold) -> None:
        self.problems += other.problems
        for key, n in other.counts.items():
            self.counts[key] = self.counts.get(key, 0) + n
        self.lengths.extend(other.lengths)
        self.reasoning = self.reasoning or other.reasoning

    def to_dict(self) -> dict[str, Any]:
        return {"problems": self.problems, "counts": self.counts, "lengths": self.lengths.tolist(),
                "reasoning": self.reasoning}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenFold:
        return cls([tuple(p) for p in data["problems"]], dict(data["counts"]),  # type: ignore[misc]
                   array("q", data["lengths"]), bool(data["reasoning"]))

    def apply(self, report: DataReport, max_length: int) -> tuple[TokenStats, int]:
        """Add the problems and drop counts to ``report``; (token statistics, kept rows)."""
        for reason, where, message, hint in self.problems:
            report.add_problem(reason, Problem(where, message, hint))
        for key in _COUNTERS:
            setattr(report, key, getattr(report, key) + self.counts[key])
        return self._stats(max_length), self.counts["kept"]

    def _stats(self, max_length: int) -> TokenStats:
        import numpy as np

        c = self.counts
        if len(self.lengths):
            ordered = np.sort(np.frombuffer(self.lengths, dtype=np.int64))
            n = len(ordered)
            stats = TokenStats(sequences=n, min=int(ordered[0]), median=int(ordered[n // 2]),
                               p95=int(ordered[min(n - 1, (n * 95) // 100)]), max=int(ordered[-1]),
                               over_max_length=int((ordered > max_length).sum()), trained_tokens=c["trained"],
                               masked_tokens=c["masked"])
        else:
            stats = TokenStats()
        if self.reasoning:
            stats.reasoning_sequences, stats.reasoning_trained_tokens = c["reasoning_sequences"], c["reasoning_trained"]
        return stats


@dataclass
class Batching:
    """How a side's examples are grouped: into shards (the unit a killed run resumes from) and encode
    batches (the unit held in memory); ``chars`` bounds a batch's text when streaming."""

    shard_records: int
    batch_records: int
    chars: int | None = None
    num_proc: int | None = None  # worker processes (datasets.map over each shard) instead of batches


class SideTokenizer:
    """Encode one side's examples as they are added; ``finish`` returns the fold and where the rows are."""

    def __init__(self, side: str, encoder: Encoder, batching: Batching, *, store: ShardStore | None,
                 build: bool, pool: Executor, doing: Any = None) -> None:
        self.side, self.encoder, self.batching = side, encoder, batching
        self.store, self.build, self.pool, self.doing = store if build else None, build, pool, doing
        self.fold, self.shard_fold = TokenFold(), TokenFold()
        self.count = self.shard = self.shard_start = self.skip_left = self.resumed = 0
        self.buffer: list[Example] = []
        self.buffer_chars = 0
        self.pending: tuple[list[Example], Future[Any]] | None = None
        self.writer: ShardWriter | None = None
        self.chunks: list[Any] = []  # kept rows in memory (no store: a source that cannot be keyed)

    def add(self, example: Example, chars: int = 0) -> None:
        if not self.skip_left and not self.buffer and self.count == self.shard_start:
            self._resume_shard()
        if self.skip_left:  # in a shard a killed earlier run finished: its fold is merged already
            self.skip_left -= 1
            self.count += 1
            self._advance(1)
            if not self.skip_left:
                self._next_shard()
            return
        self.buffer.append(example)
        self.buffer_chars += chars
        self.count += 1
        end_of_shard = self.count - self.shard_start >= self.batching.shard_records
        full = len(self.buffer) >= self.batching.batch_records or (
            self.batching.chars is not None and self.buffer_chars >= self.batching.chars)
        if end_of_shard or full:
            self._flush(end_of_shard)

    def finish(self) -> tuple[TokenFold, int]:
        """Encode what is left; (the side's fold, shards written or resumed)."""
        if self.buffer:
            self._flush(True)
        elif self.count > self.shard_start:
            self._drain()
            self._close_shard()
        return self.fold, self.shard

    def dataset(self) -> Any:
        """The kept rows built in memory (a side without a shard store)."""
        import datasets
        import pyarrow as pa
        from datasets.table import InMemoryTable

        if not self.chunks:
            return datasets.Dataset.from_dict({"input_ids": [], "labels": []})
        # A fingerprint given up front: otherwise datasets hashes the whole in-memory table (~1 s / 100k rows).
        return datasets.Dataset(InMemoryTable(pa.concat_tables(self.chunks)), fingerprint=f"nova-{uuid.uuid4().hex}")

    def abandon(self) -> None:
        if self.writer is not None:
            self.writer.abandon()

    # ------------------------------------------------------------------ internals

    def _resume_shard(self) -> None:
        if self.store is None:
            return
        meta = self.store.finished(self.side, self.shard)
        if meta is None or not meta.get("examples"):
            return
        self.fold.merge(TokenFold.from_dict(meta["fold"]))
        self.skip_left = int(meta["examples"])
        self.resumed += 1

    def _next_shard(self) -> None:
        self.shard += 1
        self.shard_start = self.count

    def _flush(self, end_of_shard: bool) -> None:
        batch, self.buffer, self.buffer_chars = self.buffer, [], 0
        if self.batching.num_proc:
            self._collect(batch, _map_cols(batch, self.encoder, self.batching.num_proc, self.build))
        else:
            prepared = self.encoder.prepare([ex.example for ex in batch])
            self._drain()  # the previous batch's Rust half ran while this one was rendered
            self.pending = (batch, self.pool.submit(self.encoder.finish, prepared, compact=True))
        if end_of_shard:
            self._drain()
            self._close_shard()

    def _drain(self) -> None:
        if self.pending is not None:
            batch, future = self.pending
            self.pending = None
            self._collect(batch, _batch_cols(batch, future.result()))

    def _collect(self, batch: list[Example], out: tuple[dict[str, list[Any]], Any]) -> None:
        cols, tokens = out
        keep = self.shard_fold.add(cols)
        if self.build and keep:
            table = tokens(keep)
            if self.store is None:
                self.chunks.append(table)
            else:
                if self.writer is None:
                    self.writer = self.store.writer(self.side, self.shard)
                self.writer.write(table)
        self._advance(len(batch))

    def _close_shard(self) -> None:
        if self.store is not None:
            writer = self.writer or self.store.writer(self.side, self.shard)
            writer.close({"examples": self.count - self.shard_start, "fold": self.shard_fold.to_dict()})
        self.writer = None
        self.fold.merge(self.shard_fold)
        self.shard_fold = TokenFold()
        self._next_shard()

    def _advance(self, n: int) -> None:
        if self.doing is not None:
            self.doing.advance(n)


def _batch_cols(batch: list[Example], out: dict[str, list[Any]]) -> tuple[dict[str, list[Any]], Any]:
    """A single-process batch's bookkeeping columns, and a builder of its kept rows' Arrow table."""
    cols = {k: out[k] for k in HELPERS if k in out}
    cols["where"] = [batch[r].where for r in out["row"]]

    def tokens(keep: list[int]) -> Any:
        columns = {k: v for k, v in out.items() if k not in HELPERS}
        if len(keep) < len(out["status"]):
            columns = {k: [v[i] for i in keep] for k, v in columns.items()}
        if "input_ids" in columns:  # SFT, compact: labels are token ranges (Encoder.finish)
            return _sft_arrow(columns["input_ids"], columns["labels"])
        return _arrow(columns)

    return cols, tokens


def _map_cols(batch: list[Example], encoder: Encoder, num_proc: int, build: bool) -> tuple[dict[str, list[Any]], Any]:
    """Multi-process batched datasets.map over the examples (as JSON strings)."""
    import datasets

    datasets.disable_progress_bars()  # library code does not print; the CLI reports counts
    ds = datasets.Dataset.from_dict({"where": [ex.where for ex in batch],
                                     "example": [json.dumps(ex.example, ensure_ascii=False) for ex in batch]})
    # A chat may become several rows: every input column is replaced (Encoder.__call__ carries "where").
    ds = ds.map(encoder, batched=True, batch_size=_MAP_BATCH, num_proc=num_proc, remove_columns=["where", "example"],
                new_fingerprint=f"nova-{uuid.uuid4().hex}")
    # Whole Arrow columns to Python at once (iterating a datasets Column formats row by row).
    cols = {c: ds.data.column(c).to_pylist() for c in HELPERS if c in ds.column_names}

    def tokens(keep: list[int]) -> Any:
        kept = ds.select(keep).remove_columns([c for c in HELPERS if c in ds.column_names]).flatten_indices()
        return kept.data.table

    return cols, tokens


def _arrow(columns: dict[str, list[Any]]) -> Any:
    """Token lists to an Arrow table of int64 lists, built from flat values and offsets (faster than
    pa.array on a list of lists, which converts and checks row by row); KTO's ``label`` is one bool a row,
    GRPO's ``record`` one JSON string."""
    import numpy as np
    import pyarrow as pa

    scalar = {"label": pa.bool_(), "record": pa.string()}
    return pa.table({name: pa.array(values, type=scalar[name]) if name in scalar else _list_array(values, np, pa)
                     for name, values in columns.items()})


def _list_array(rows: list[list[int]], np: Any, pa: Any) -> Any:
    offsets, values = _flat(rows, np)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def _flat(rows: list[list[int]], np: Any) -> tuple[Any, Any]:
    """(offsets, values) of a list of int lists; 32-bit offsets as pa.list_ uses (one batch of
    rows is far below 2**31 tokens)."""
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, rows), dtype=np.int64, count=len(rows)), out=offsets[1:])
    values = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(offsets[-1]))
    return offsets.astype(np.int32), values


def _sft_arrow(ids: list[list[int]], ranges: list[list[tuple[int, int]] | None]) -> Any:
    """input_ids and labels columns; labels from each row's trained token ranges (None: all
    trained) in one vectorized step: the id inside a range, IGNORE outside."""
    import numpy as np
    import pyarrow as pa

    offsets, values = _flat(ids, np)
    starts: list[int] = []
    ends: list[int] = []
    for row, spans in enumerate(ranges):
        base = int(offsets[row])
        if spans is None:
            starts.append(base)
            ends.append(int(offsets[row + 1]))
        else:
            starts += [base + a for a, _ in spans]
            ends += [base + b for _, b in spans]
    total = len(values)
    depth = np.cumsum(np.bincount(np.array(starts, dtype=np.int64), minlength=total + 1)
                      - np.bincount(np.array(ends, dtype=np.int64), minlength=total + 1))[:total]
    labels = np.where(depth > 0, values, IGNORE)
    offsets = pa.array(offsets)
    return pa.table({"input_ids": pa.ListArray.from_arrays(offsets, pa.array(values)),
                     "labels": pa.ListArray.from_arrays(offsets, pa.array(labels))})


def row_lengths(dataset: Any, column: str = "input_ids") -> list[int]:
    """Tokens per row of a token column, computed on the Arrow data (a memory-mapped dataset larger than RAM
    is not turned into Python lists to count it)."""
    import pyarrow.compute as pc

    if getattr(dataset, "_indices", None) is None:
        return pc.list_value_length(dataset.data.column(column)).to_pylist()
    return [len(ids) for ids in dataset[column]]
