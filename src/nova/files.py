"""Files written so a crash never leaves half an output: temporary siblings renamed into place.

Shared by GGUF import, merge and export (and the checkpoint and adapter writers follow the same
rule): a reader sees either the old output or the complete new one.
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


def dir_size(path: Path) -> int:
    """Total size in bytes of the files under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def human_bytes(n: float) -> str:
    """``n`` bytes as a short human-readable string (ASCII, powers of 1024)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover



def check_output_dir(out_dir: Path, force: bool) -> None:
    """Refuse to overwrite a non-empty directory (or any file) unless ``force``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise NovaError(f"output exists and is not a directory: {out_dir}", hint="choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise NovaError(f"output directory is not empty: {out_dir}",
                        hint="choose another --out, or pass --force to replace it")


@contextlib.contextmanager
def atomic_dir(out_dir: Path, force: bool) -> Iterator[Path]:
    """Yield a temporary sibling of ``out_dir`` and move it into place only if the block succeeds.

    A crash or Ctrl-C leaves the old output (or nothing) in place, never a half-written model that
    a later run would mistake for a good one.
    """
    check_output_dir(out_dir, force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{int(time.time() * 1000)}"
    tmp.mkdir()
    try:
        yield tmp
        replace_path(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_path(src: Path, dest: Path) -> None:
    """Move ``src`` to ``dest``, replacing what is there with as short a gap as rename allows."""
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{os.getpid()}-{int(time.time() * 1000)}"
        dest.rename(old)
    try:
        src.rename(dest)
    except OSError:
        if old is not None:
            old.rename(dest)
        raise
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary sibling and rename it over ``path``."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
