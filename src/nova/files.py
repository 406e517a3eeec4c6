"""Files written so a crash never leaves half an output: temporary siblings renamed into place.

Every writer of nova uses these (GGUF import, merge, export, checkpoints, adapters, run state):
a reader sees either the old output or the complete new one. Sizes (``GiB``, ``human_bytes``)
live here too, so one definition serves every module.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nova.errors import NovaError

GiB = 1024**3
MiB = 1024**2


def dir_size(path: Path) -> int:
    """Total size in bytes of the files under ``path`` (a file: its size; missing: 0)."""
    path = Path(path)
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def human_bytes(n: float) -> str:
    """``n`` bytes as a short human-readable string (ASCII, powers of 1024)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover


def check_output_dir(out_dir: Path, force: bool, *, marker: str | None = None) -> None:
    """Refuse to overwrite a non-empty directory (or any file) unless ``force``.

    With ``marker`` (the provenance file nova writes into such an output), ``force`` replaces only a
    directory that holds it: one nova wrote. A typo'd ``--out ~/models --force`` must not delete a
    directory of someone's own files.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise NovaError(f"output exists and is not a directory: {out_dir}", hint="choose another --out")
    if not (out_dir.is_dir() and any(out_dir.iterdir())):
        return
    if not force:
        raise NovaError(f"output directory is not empty: {out_dir}",
                        hint="choose another --out, or pass --force to replace it")
    if marker is not None and not (out_dir / marker).is_file():
        raise NovaError(f"{out_dir} is not empty and was not written by nova (no {marker}); --force replaces "
                        "only an earlier nova output", hint="choose another --out, or move the directory away")


def portable_path(path: str | Path, base: Path) -> str:
    """``path`` as recorded in a file that travels with the output ``base``: relative to ``base``, or
    the bare name when the two share nothing below the root (``../../tmp/x`` would spell the
    absolute path). A model shipped to someone else must not carry this machine's directory names.
    """
    target, home = Path(path).expanduser().resolve(), Path(base).expanduser().resolve()
    try:
        common = Path(os.path.commonpath([target, home]))
    except ValueError:  # different drives (Windows)
        return target.name
    if common == Path(common.anchor):
        return target.name
    return os.path.relpath(target, home)


def temp_sibling(path: Path, tag: str = "tmp") -> Path:
    """A hidden name beside ``path`` that no other process of nova uses at the same time."""
    return path.parent / f".{path.name}.{tag}-{os.getpid()}-{int(time.time() * 1000)}"


@contextlib.contextmanager
def atomic_dir(out_dir: Path, force: bool = True, *, check: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of ``out_dir`` and move it into place only if the block succeeds.

    A crash or Ctrl-C leaves the old output (or nothing) in place, never a half-written model that
    a later run would mistake for a good one. ``check`` refuses a non-empty ``out_dir`` unless ``force``.
    """
    if check:
        check_output_dir(out_dir, force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out_dir)
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        replace_path(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_path(src: Path, dest: Path) -> None:
    """Move ``src`` to ``dest``, replacing what is there with as short a gap as rename allows."""
    old = None
    if dest.exists():
        old = temp_sibling(dest, "old")
        dest.rename(old)
    try:
        src.rename(dest)
    except OSError:
        if old is not None:
            old.rename(dest)
        raise
    fsync_dir(dest.parent)
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, a new file) durable; best effort where unsupported."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file under ``path`` and the directories themselves (before sealing or renaming)."""
    for p in sorted(Path(path).rglob("*"), reverse=True):
        if p.is_file():
            with p.open("rb") as fh:
                os.fsync(fh.fileno())
        elif p.is_dir():
            fsync_dir(p)
    fsync_dir(Path(path))


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary sibling, fsync it, and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON atomically (see ``write_text_atomic``)."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")
