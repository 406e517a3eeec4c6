"""Tokenized data as numbered Arrow shards on disk, so a killed tokenization resumes where it stopped.

While a stage's data is tokenized, each side (train, eval) is written shard by shard into
``<cache_dir>/data/<key>.partial/``: ``train-00003.arrow`` (the kept rows' token columns, an Arrow
stream that ``datasets`` memory-maps) and ``train-00003.json`` (the shard's bookkeeping: problems,
drops and token statistics), the json written last, so a shard with its json is finished. A rerun
with the same key (same data, settings and tokenizer) folds the finished shards' bookkeeping and
tokenizes only the rest. When both sides are done the directory is renamed to ``<key>/`` with
``shards.json`` (the file lists) and ``report.json``: the sealed cache entry.

Rows are never held in memory beyond one encoded batch: each batch is appended to its shard's
file as it comes, which is what lets streaming (``data.streaming``) train from data larger than RAM.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from nova.files import fsync_dir, fsync_file, remove_file, remove_tree, rename, temp_sibling, write_json_atomic

SHARDS_FILE = "shards.json"
REPORT_FILE = "report.json"


def shard_name(side: str, index: int) -> str:
    return f"{side}-{index:05d}"


class ShardWriter:
    """One shard's Arrow stream, opened at its first batch (a shard whose rows were all dropped has no file)."""

    def __init__(self, root: Path, side: str, index: int) -> None:
        self.path = root / f"{shard_name(side, index)}.arrow"
        self.tmp = temp_sibling(self.path)
        self.rows = 0
        self._sink: Any = None
        self._writer: Any = None

    def write(self, table: Any) -> None:
        import pyarrow as pa

        if table.num_rows == 0:
            return
        if self._writer is None:
            self._sink = pa.OSFile(str(self.tmp), "wb")
            self._writer = pa.ipc.new_stream(self._sink, table.schema)
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self, meta: dict[str, Any]) -> None:
        """Seal the shard: its rows' file in place, then the bookkeeping that marks it finished."""
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            fsync_file(self.tmp)
            rename(self.tmp, self.path)
        meta = {**meta, "rows": self.rows, "bytes": self.path.stat().st_size if self.rows else 0}
        write_json_atomic(self.path.with_suffix(".json"), meta)

    def abandon(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
                self._sink.close()
        with contextlib.suppress(OSError):
            remove_file(self.tmp)


class ShardStore:
    """The shards of one cache key being tokenized (``<key>.partial``), sealed into ``<key>`` when done."""

    def __init__(self, cache_dir: str, key: str) -> None:
        self.final = Path(cache_dir) / "data" / key
        self.root = self.final.with_name(f"{key}.partial")
        self.root.mkdir(parents=True, exist_ok=True)

    def finished(self, side: str, index: int) -> dict[str, Any] | None:
        """A finished shard's bookkeeping, or None (not written, or its rows' file does not match it)."""
        meta_path = self.root / f"{shard_name(side, index)}.json"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            arrow = self.root / f"{shard_name(side, index)}.arrow"
            if meta["rows"] and arrow.stat().st_size != meta["bytes"]:
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return meta

    def writer(self, side: str, index: int) -> ShardWriter:
        return ShardWriter(self.root, side, index)

    def files(self, side: str, shards: int) -> list[str]:
        return [f"{shard_name(side, i)}.arrow" for i in range(shards)
                if (self.root / f"{shard_name(side, i)}.arrow").exists()]

    def seal(self, listing: dict[str, Any], report: dict[str, Any]) -> Path:
        """Write the entry's file lists and report, and rename the shards into place (another process that
        sealed the same key first wins: same key, same contents)."""
        write_json_atomic(self.root / SHARDS_FILE, listing)
        write_json_atomic(self.root / REPORT_FILE, report)
        for leftover in self.root.glob("*.json"):
            if leftover.name not in (SHARDS_FILE, REPORT_FILE) and leftover.stem.split("-")[0] in ("train", "eval"):
                remove_file(leftover)  # the shards' bookkeeping is in report.json now
        if (self.final / REPORT_FILE).exists():
            remove_tree(self.root)
            return self.final
        if self.final.exists():
            remove_tree(self.final)  # a half-deleted older entry
        rename(self.root, self.final)
        fsync_dir(self.final.parent)
        return self.final


def open_side(root: Path, files: list[str] | None) -> Any:
    """The memory-mapped dataset of a sealed side's shards (None: the side has no data at all)."""
    if files is None:
        return None
    import datasets

    if not files:
        return datasets.Dataset.from_dict({"input_ids": [], "labels": []})
    parts = [datasets.Dataset.from_file(str(root / name)) for name in files]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


__all__ = ["REPORT_FILE", "SHARDS_FILE", "ShardStore", "ShardWriter", "open_side", "shard_name"]
