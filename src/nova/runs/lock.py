"""One training process per run directory: ``nova.pid`` is both the lock and the record of who holds it.

The lock is an exclusive ``flock`` on ``nova.pid``, held for the life of the run: the kernel
releases it when the process dies (``kill -9`` included), so a stale pid file never blocks a
new run, and a second ``nova train`` on the same directory is refused with the pid and host of
the first. ``nova status`` reads the same file to say who is training.

Also here: the marker nova writes into every run directory it makes, so ``--fresh`` and
``--force`` only ever delete inside directories nova owns.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from nova import __version__
from nova.errors import NovaError
from nova.files import write_json_atomic
from nova.runs.layout import CONFIG, PID_FILE, RUN_MARKER, RunDir


def _holder(path: Path) -> str:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {data.get('pid')} on host {data.get('host')}"
    except (OSError, ValueError, AttributeError):
        return "another process"


@contextlib.contextmanager
def locked(directory: Path, what: str) -> Iterator[None]:
    """Hold the lock of ``directory`` (created if missing) for the block, or raise a NovaError.

    The lock file is verified to still be the one on disk after locking (a releasing process
    unlinks it, and a lock on an unlinked file would protect nothing).
    """
    created = [p for p in (directory, *directory.parents) if not p.exists()]  # deepest first
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / PID_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise NovaError(f"{what} {directory} is in use by {_holder(path)}",
                            hint=f"wait for that run to end (nova status {directory}), or stop it first") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the file was unlinked by a process that just released it: lock the new one
    try:
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)
        for made in created:  # a run that stopped before writing anything leaves no empty directory behind
            try:
                made.rmdir()
            except OSError:
                break  # not empty: it holds what the run wrote


def check_run_dir(run: RunDir) -> None:
    """Refuse a run directory that holds files nova did not make (so --fresh never deletes them)."""
    if made_by_nova(run.path) or not run.path.is_dir():
        return
    foreign = sorted(p.name for p in run.path.iterdir() if p.name != PID_FILE)
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise NovaError(f"run directory {run.path} exists and was not made by nova (it holds {shown})",
                        hint="choose another output_dir, or empty that directory")


def mark_run_dir(run: RunDir) -> None:
    """Mark a run directory as nova's (at its first write)."""
    marker = run.path / RUN_MARKER
    if not marker.exists():
        write_json_atomic(marker, {"created_by": f"nova {__version__}", "created": time.time()})


def made_by_nova(path: Path) -> bool:
    """Holds nova's marker, or a config.yaml (a run written before the marker existed)."""
    return (path / RUN_MARKER).exists() or (path / CONFIG).exists()
