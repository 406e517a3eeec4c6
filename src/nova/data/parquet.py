"""Parquet rows, bounded like JSON Lines lines: a cell past MAX_CELL is a record problem, a file that inflates
past MAX_INFLATE times its size is refused, and nothing is materialized before it is measured.

A Parquet file compresses repeated text into almost nothing (a 522-byte file can hold 4,600 copies of a
1 MiB string: 4.8 GB once read). Text columns are therefore read dictionary-encoded (each distinct value
once), their cells measured from the dictionary, and only then turned into Python rows, a batch at a
time when the batch is small and a row at a time when it is not.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nova.data.listing import FileProblem
from nova.data.records import RecordProblem

MiB = 1024 * 1024
PARQUET_BATCH = 4096  # rows per record batch
MAX_CELL = 64 * MiB  # one row's text, as for one JSON Lines line (nova.data.sources.MAX_LINE)
BATCH_BYTES = 256 * MiB  # a batch of rows with more text than this is turned into Python one row at a time
MAX_INFLATE = 1000  # text this many times the file's size (and over MIN_INFLATED) is a decompression bomb
MIN_INFLATED = 1024 * MiB

Row = tuple[str, dict[str, Any] | None, RecordProblem | None]


def open_parquet(path: Path) -> tuple[list[str], Iterator[Row]]:
    """(the column names, the rows as (where, fields or None, problem or None))."""
    from nova.lazy import require

    pa = require("pyarrow")
    pq = require("pyarrow.parquet")
    try:
        schema = pq.read_schema(path)
        text = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
                or pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
        parquet = pq.ParquetFile(path, read_dictionary=text)
    except OSError as exc:
        raise FileProblem("unreadable", str(path), f"cannot read: {exc}") from None
    except Exception as exc:  # pyarrow raises ArrowInvalid for corrupt files
        raise FileProblem("unreadable", str(path), f"not a readable Parquet file: {exc}") from None
    return list(schema.names), _rows(path, parquet, max(path.stat().st_size * MAX_INFLATE, MIN_INFLATED))


def _rows(path: Path, parquet: Any, budget: int) -> Iterator[Row]:
    index, total = 0, 0
    try:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH):
            sizes = _row_sizes(batch)
            total += sum(sizes)
            if total > budget:
                raise FileProblem("too_complex", str(path), f"its text inflates to more than {budget // MiB} MiB "
                                  f"({MAX_INFLATE}x the file's size) by row {index + len(sizes)}",
                                  "a Parquet file this compressed is not training data; check where it came from")
            rows = batch.to_pylist() if sum(sizes) <= BATCH_BYTES and max(sizes, default=0) <= MAX_CELL else None
            for k, size in enumerate(sizes):
                where = f"{path}[{index}]"
                index += 1
                if size > MAX_CELL:
                    yield where, None, RecordProblem("too_complex", f"the row holds {size // MiB} MiB of text, more "
                                                     f"than {MAX_CELL // MiB} MiB", "split the record")
                    continue
                yield where, rows[k] if rows is not None else batch.slice(k, 1).to_pylist()[0], None
    except (OSError, ValueError) as exc:  # a corrupt row group (ArrowInvalid is a ValueError)
        raise FileProblem("unreadable", f"{path}[{index}]", f"not a readable Parquet file: {exc}") from None
    except MemoryError:
        raise FileProblem("too_complex", f"{path}[{index}]", "a row group is too large to read",
                          "write the file with smaller row groups") from None


def _row_sizes(batch: Any) -> list[int]:
    """Bytes of text per row over the text columns (read dictionary-encoded: measured without copying)."""
    from nova.lazy import require

    pa = require("pyarrow")
    pc = require("pyarrow.compute")
    total = None
    for column in batch.columns:
        if pa.types.is_dictionary(column.type):
            lengths = pc.take(pc.binary_length(column.dictionary), column.indices)
        elif pa.types.is_string(column.type) or pa.types.is_binary(column.type) or \
                pa.types.is_large_string(column.type) or pa.types.is_large_binary(column.type):
            lengths = pc.binary_length(column)
        else:
            continue
        lengths = pc.fill_null(lengths.cast(pa.int64()), 0)
        total = lengths if total is None else pc.add(total, lengths)
    if total is None:
        return [0] * batch.num_rows
    return [int(x) for x in total.to_pylist()]
