"""One training process per run directory: ``nova.lock`` is the lock, ``nova.pid`` says who holds it.

The lock is an operating-system lock on ``nova.lock`` (flock on Linux and macOS, LockFileEx on
Windows, through the ``filelock`` package), held for the life of the run: the kernel releases
it when the process dies (``kill -9`` or Task Manager included), so a stale file never blocks a
new run. The holder's pid and host go into a separate file, ``nova.pid``, written after the
lock is taken: a Windows lock forbids other processes to read the locked file's bytes, and a
second process trying the lock may truncate it, so the record cannot live in the lock file.
A second ``nova train`` on the same directory is refused with the pid and host of the first;
``nova status`` reads ``nova.pid`` to say who is training.

Also here: the marker nova writes into every run directory (and pipeline output directory) it
makes, so ``--fresh`` and ``--force`` only ever delete, and training only ever writes, inside
directories nova owns. A file name anyone may have (``config.yaml``, ``metrics.jsonl``,
``pipeline.json``) proves nothing; a run written before the marker existed is recognised by
nova's own record in its config.yaml (a ``_resolved`` section naming the base), a pipeline by a
``pipeline.json`` in nova's shape, and is marked at its next run.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from nova import __version__
from nova.errors import NovaError
from nova.files import remove_file, write_json_atomic
from nova.runs.layout import CONFIG, LOCK_FILE, PID_FILE, RUN_MARKER, RunDir


def _holder(path: Path) -> str:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {data.get('pid')} on host {data.get('host')}"
    except (OSError, ValueError, AttributeError):
        return "another process"


@contextlib.contextmanager
def locked(directory: Path, what: str) -> Iterator[None]:
    """Hold the lock of ``directory`` (created if missing) for the block, or raise a NovaError.

    ``nova.lock`` stays in the directory after the run (deleting a lock file others may be
    opening would let two processes lock two different files); only a directory this call
    created and in which nothing else was written is removed again, lock file and all.
    """
    import filelock

    created = [p for p in (directory, *directory.parents) if not p.exists()]  # deepest first
    directory.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(directory / LOCK_FILE), timeout=0)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise NovaError(f"{what} {directory} is in use by {_holder(directory / PID_FILE)}",
                        hint=f"wait for that run to end (nova status {directory}), or stop it first") from None
    try:
        write_json_atomic(directory / PID_FILE, {"pid": os.getpid(), "host": socket.gethostname(),
                                                 "started": time.time()})
        yield
    finally:
        with contextlib.suppress(OSError, NovaError):  # held by a reader for seconds: status then says stale
            remove_file(directory / PID_FILE)
        lock.release()
        _remove_unused(created, directory / LOCK_FILE)


def current_holder(directory: Path) -> str | None:
    """Who holds the lock of ``directory`` right now ("pid N on host H"), or None when nobody does.

    Asked of the operating system (a try of the lock, released at once), so a holder that died
    (kill -9, a reboot) never counts: its stale ``nova.pid`` says nothing. Where the lock cannot
    be tried (a read-only copy of a run), ``nova.pid`` answers for a live process on this host,
    or any process named on another host.
    """
    import filelock

    from nova.runs.process import read_process

    lock_file = directory / LOCK_FILE
    if lock_file.exists():
        lock = filelock.FileLock(str(lock_file), timeout=0)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            return _holder(directory / PID_FILE)
        except OSError:
            pass  # not writable here: fall back on the pid record
        else:
            lock.release()
            return None
    info = read_process(directory)
    if info.state in ("running", "other_host"):
        return f"pid {info.pid} on host {info.host or socket.gethostname()}"
    return None


def _remove_unused(created: list[Path], lock_file: Path) -> None:
    """A run that stopped before writing anything leaves no empty directory (nor its lock file) behind."""
    if not created or any(p.name != LOCK_FILE for p in created[0].iterdir()):
        return
    with contextlib.suppress(OSError):
        lock_file.unlink()
    for made in created:
        try:
            made.rmdir()
        except OSError:
            break  # not empty: it holds what the run wrote


def check_run_dir(run: RunDir) -> None:
    """Refuse a run directory that holds files nova did not make (so --fresh never deletes them)."""
    if made_by_nova(run.path) or not run.path.is_dir():
        return
    foreign = sorted(p.name for p in run.path.iterdir() if p.name not in (PID_FILE, LOCK_FILE))
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise NovaError(f"run directory {run.path} exists and was not made by nova (it holds {shown}; "
                        f"no {RUN_MARKER})", hint="choose another output_dir, or empty that directory")


def mark_run_dir(run: RunDir) -> None:
    """Mark a run directory as nova's (at its first write)."""
    write_marker(run.path, "run")


def write_marker(path: Path, kind: str) -> None:
    """nova's marker in a directory it makes (``kind``: run or pipeline); kept when there already."""
    marker = path / RUN_MARKER
    if not marker.exists():
        write_json_atomic(marker, {"created_by": f"nova {__version__}", "created": time.time(), "kind": kind})


def made_by_nova(path: Path) -> bool:
    """Holds nova's marker, or nova's own record in config.yaml (a run written before the marker existed).

    Only ``_resolved.base`` counts of a config.yaml, never its name: anyone's project may hold one.
    """
    if (path / RUN_MARKER).is_file():
        return True
    return _legacy_record(path / CONFIG)


def _legacy_record(config: Path) -> bool:
    """config.yaml as nova wrote it before the marker: a small YAML mapping with ``_resolved: {base: ...}``."""
    import yaml

    from nova.config.safe_yaml import MAX_BYTES

    try:
        if not config.is_file() or config.stat().st_size > MAX_BYTES:
            return False
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return False
    resolved = data.get("_resolved") if isinstance(data, dict) else None
    return isinstance(resolved, dict) and isinstance(resolved.get("base"), str)
