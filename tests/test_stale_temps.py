"""A merge, export or data-cache save killed half-way leaves a hidden temporary sibling: the next run of that
writer removes it (only nova's own names, beside that output, and only when their process is gone)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from nova.files import atomic_dir, clean_stale_siblings


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_next_write_removes_what_a_killed_one_left(tmp_path: Path) -> None:
    out = tmp_path / "merged"
    dead = _dead_pid()
    stale = tmp_path / f".merged.tmp-{dead}-1700000000000"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "model.safetensors").write_bytes(b"x" * 1000)
    mine = tmp_path / f".merged.tmp-{os.getpid()}-1"  # this process's own: in use
    mine.mkdir()
    others = [tmp_path / f".other.tmp-{dead}-1", tmp_path / ".merged.tmp-notes", tmp_path / "merged.tmp-1-1"]
    for path in others:
        path.mkdir()
    with atomic_dir(out) as tmp:
        (tmp / "config.json").write_text("{}")
    assert not stale.exists() and mine.exists() and all(p.exists() for p in others)
    assert (out / "config.json").is_file()


def test_a_lone_old_sibling_is_the_earlier_output_and_is_put_back(tmp_path: Path) -> None:
    out = tmp_path / "model.gguf"
    old = tmp_path / f".model.gguf.old-{_dead_pid()}-1700000000000"
    old.write_bytes(b"GGUF earlier export")
    assert clean_stale_siblings(out) == [old]
    assert out.read_bytes() == b"GGUF earlier export" and not old.exists()
    again = tmp_path / f".model.gguf.old-{_dead_pid()}-1700000000001"
    again.write_bytes(b"older")
    clean_stale_siblings(out)  # the output is there: the old copy was on its way out
    assert not again.exists() and out.read_bytes() == b"GGUF earlier export"
