"""Which files of a data path nova reads, and why each other file is not read.

A directory is walked once: every entry ends up read, ignored by the dataset's ``ignore:`` globs,
hidden, not a regular file, or not read for its suffix, and the counts are shown ("2 of 9 files
read; not read: 5 .txt, 1 .gz") by ``nova data check``, preflight and training. Suffixes are matched
case-insensitively; ``.gz`` and ``.zst`` wrap a JSON Lines, JSON or CSV file and are read streamed.
A directory that holds data-like files nova cannot read is refused unless ``ignore:`` names them:
training on 79 of 2,181 files in silence is the failure this module exists to prevent.
"""

from __future__ import annotations

import fnmatch
import gzip
import importlib.util
import os
import stat
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

READABLE = (".jsonl", ".json", ".csv", ".parquet")
COMPRESSED = (".gz", ".zst")  # around .jsonl, .json or .csv (Parquet compresses inside itself)
# Suffixes of files that hold data nova cannot read as they are: a directory with one is refused
# unless the dataset's ignore: names it. Other files (README.md, LICENSE, a .yaml) are counted, not refused.
DATA_LIKE = frozenset({".txt", ".tsv", ".ndjson", ".arrow", ".feather", ".xlsx", ".xls", ".zip", ".tar", ".tgz",
                       ".bz2", ".xz", ".7z", ".lz4", ".gz", ".zst", ".avro", ".orc", ".pkl", ".pickle", ".h5",
                       ".hdf5", ".npy", ".npz"})


class FileProblem(Exception):
    """A whole file (or directory) cannot be used."""

    def __init__(self, reason: str, where: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.where = where
        self.message = message
        self.hint = hint


def zstd_available() -> bool:
    """``.zst`` files are read through the optional ``zstandard`` package (pip install zstandard)."""
    return importlib.util.find_spec("zstandard") is not None


def data_suffix(path: Path) -> str | None:
    """The format nova reads a file as (``.jsonl``, ``.json``, ``.csv``, ``.parquet``), whatever the case
    and through ``.gz``/``.zst``; None for a file nova does not read."""
    suffixes = [s.lower() for s in path.suffixes]
    if not suffixes:
        return None
    if suffixes[-1] in READABLE:
        return suffixes[-1]
    if suffixes[-1] in COMPRESSED and len(suffixes) > 1 and suffixes[-2] in READABLE[:3]:
        if suffixes[-1] == ".zst" and not zstd_available():
            return None
        return suffixes[-2]
    return None


def compression(path: Path) -> str | None:
    """``.gz`` or ``.zst`` when the file is compressed around a data file, else None."""
    last = path.suffix.lower()
    return last if last in COMPRESSED and data_suffix(path) is not None else None


def suffix_label(path: Path) -> str:
    """How a file that is not read is counted: its last suffix (``.txt``, ``.bz2``), or its name without one."""
    suffixes = [s.lower() for s in path.suffixes]
    if len(suffixes) > 1 and suffixes[-1] in COMPRESSED:
        return "".join(suffixes[-2:])
    return suffixes[-1] if suffixes else "no suffix"


def is_data_like(path: Path) -> bool:
    """A file that plausibly holds data (refused unless ignored) rather than notes or code beside it."""
    return path.suffix.lower() in DATA_LIKE


@dataclass
class Listing:
    """A data path's files: those read, in order, and every other entry counted by why it is not read."""

    files: list[Path] = field(default_factory=list)
    not_read: Counter[str] = field(default_factory=Counter)  # ".txt", "hidden", "ignored", "not a regular file"
    cannot_read: list[Path] = field(default_factory=list)  # data-like files nova has no reader for
    directory: bool = False

    @property
    def total(self) -> int:
        return len(self.files) + sum(self.not_read.values())

    def summary(self) -> str:
        """``2 of 9 files read; not read: 5 .txt, 1 .gz`` (the files line of the report)."""
        text = f"{len(self.files)} of {self.total} files read"
        if self.not_read:
            text += "; not read: " + ", ".join(f"{n} {label}" for label, n in self.not_read.most_common())
        return text


def ignored(rel: str, patterns: Sequence[str]) -> bool:
    """Whether a file (its path relative to the data directory, with /) matches an ``ignore:`` glob, by
    its whole relative path or its name, case-insensitively (``*.txt`` matches ``sub/NOTES.TXT``)."""
    rel = rel.lower()
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(rel, p.lower()) or fnmatch.fnmatchcase(name, p.lower()) for p in patterns)


def list_source(path: Path, ignore: Sequence[str] = ()) -> Listing:
    """Every entry under a directory (hidden ones counted, not walked into), or the one file given."""
    listing = Listing(directory=True)
    for root, dirs, names in os.walk(path):
        hidden = [d for d in dirs if d.startswith(".")]
        if hidden:
            listing.not_read["hidden"] += len(hidden)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            _classify(Path(root) / name, path, ignore, listing)
    listing.files.sort()
    listing.cannot_read.sort()
    return listing


def _classify(file: Path, top: Path, ignore: Sequence[str], listing: Listing) -> None:
    rel = file.relative_to(top).as_posix()
    if file.name.startswith("."):
        listing.not_read["hidden"] += 1
    elif ignore and ignored(rel, ignore):
        listing.not_read["ignored"] += 1
    elif not _regular(file):
        listing.not_read["not a regular file"] += 1
    elif data_suffix(file) is not None:
        listing.files.append(file)
    else:
        listing.not_read[suffix_label(file)] += 1
        if is_data_like(file):
            listing.cannot_read.append(file)


def _regular(path: Path) -> bool:
    """A regular file (a symlink to one counts); FIFOs, sockets and devices are never opened."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def open_stream(path: Path, raw: BinaryIO) -> Any:
    """``raw`` decompressed when the file is ``.gz`` or ``.zst``, else ``raw`` itself."""
    kind = compression(path)
    if kind == ".gz":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if kind == ".zst":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
    return raw


def decompress_errors() -> tuple[type[BaseException], ...]:
    """What a damaged compressed file raises while it is read (gzip's, zstandard's, a cut-off stream)."""
    errors: list[type[BaseException]] = [gzip.BadGzipFile, EOFError]
    if zstd_available():
        import zstandard

        errors.append(zstandard.ZstdError)
    return tuple(errors)


def listing(path: Path, ignore: tuple[str, ...] | list[str] = ()) -> Listing:
    """The files of a source that are read and every other entry counted by why not (nova.data.listing)."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if not path.exists():
            raise FileProblem("unreadable", str(path), "no such file or directory") from None
        raise FileProblem("unreadable", str(path), f"cannot read: {exc.strerror or exc}") from None
    if stat.S_ISREG(mode):
        return Listing(files=[path])
    if not stat.S_ISDIR(mode):
        raise FileProblem("unreadable", str(path), "not a regular file or a directory (a FIFO, socket or device); "
                          "nova reads data from files", "write the records to a .jsonl file and point path at it")
    found = list_source(path, ignore)
    if found.cannot_read:
        shown = ", ".join(p.relative_to(path).as_posix() for p in found.cannot_read[:3])
        more = f" and {len(found.cannot_read) - 3} more" if len(found.cannot_read) > 3 else ""
        globs = sorted({f"*{p.suffix.lower()}" for p in found.cannot_read})
        raise FileProblem("cannot_read", str(path), f"{found.summary()}; nova cannot read {len(found.cannot_read)} "
                          f"data file(s): {shown}{more}", "convert them to .jsonl, .json, .csv or .parquet, or add "
                          f"ignore: [{', '.join(repr(g) for g in globs)}] to this dataset to leave them out")
    if not found.files:
        what = f" ({found.summary()})" if found.total else ""
        raise FileProblem("empty_file", str(path), f"the directory holds no .jsonl, .json, .csv or .parquet files"
                          f"{what}")
    return found


def list_files(path: Path, ignore: tuple[str, ...] | list[str] = ()) -> list[Path]:
    """The data files of a source: the file itself, or a directory's data files in sorted order."""
    return listing(path, ignore).files
