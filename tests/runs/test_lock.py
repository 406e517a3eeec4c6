"""The run lock (filelock: flock here, LockFileEx on Windows): one holder, named when refused, released
by the kernel when the holder dies, and a pid record readable while the lock is held."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from nova.errors import NovaError
from nova.monitor.status import read_status
from nova.runs.layout import LOCK_FILE, PID_FILE
from nova.runs.lock import check_run_dir, locked
from nova.runs.process import read_process

KEPT = sys.platform != "win32"  # flock's file stays for waiters; filelock deletes Windows' on release

HOLDER = """
import sys, time
from pathlib import Path
from nova.runs.lock import locked
with locked(Path(sys.argv[1]), "run directory"):
    print("held", flush=True)
    time.sleep(120)
"""


def _hold(directory: Path) -> subprocess.Popen[str]:
    """Another process holding the lock of ``directory`` (a command line that says nova, like a run)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory), "nova"], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_holder_is_refused_with_pid_and_host_and_a_killed_one_releases(tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder = _hold(run)
    try:
        with pytest.raises(NovaError, match=re.escape(f"run directory {run} is in use by pid {holder.pid} on host "
                                                      f"{socket.gethostname()}")), locked(run, "run directory"):
            pass
        assert read_process(run).state == "running"  # nova status reads the record while the lock is held
    finally:
        holder.kill()  # kill -9 / Task Manager: no cleanup runs in the holder
        holder.wait()
    assert json.loads((run / PID_FILE).read_text())["pid"] == holder.pid  # left behind, stale
    assert read_process(run).state == "stale"
    with locked(run, "run directory"):  # the kernel released the lock with the process
        assert json.loads((run / PID_FILE).read_text())["pid"] == os.getpid()
    assert not (run / PID_FILE).exists() and (run / LOCK_FILE).exists() == KEPT


def test_the_record_is_a_separate_file_from_the_lock(tmp_path: Path) -> None:
    """On Windows a locked file's bytes cannot be read by other processes: the pid record must not live in it."""
    with locked(tmp_path / "run", "run directory"):
        record = json.loads((tmp_path / "run" / PID_FILE).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        if sys.platform != "win32":  # there the locked byte cannot even be read: the reason for two files
            assert (tmp_path / "run" / LOCK_FILE).read_bytes() == b""


def test_a_run_that_wrote_nothing_leaves_no_directory_and_one_that_did_keeps_it(tmp_path: Path) -> None:
    with locked(tmp_path / "a" / "b", "run directory"):
        pass
    assert not (tmp_path / "a").exists()
    with locked(tmp_path / "c", "run directory"):
        (tmp_path / "c" / "metrics.jsonl").write_text("{}\n")
    assert {p.name for p in (tmp_path / "c").iterdir()} == {"metrics.jsonl", *([LOCK_FILE] if KEPT else [])}


def test_the_lock_file_is_not_a_foreign_file(tmp_path: Path) -> None:
    from nova.runs.layout import RunDir

    run = tmp_path / "run"
    run.mkdir()
    with locked(run, "run directory"):
        check_run_dir(RunDir(run))  # nova.lock and nova.pid are nova's own
    (run / "notes.txt").write_text("mine")
    with pytest.raises(NovaError, match=r"not made by nova \(it holds notes.txt;"):
        check_run_dir(RunDir(run))


def test_status_of_a_live_holder_says_running(tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder = _hold(run)
    try:
        (run / "metrics.jsonl").write_text(json.dumps({"stage": "sft", "step": 1, "loss": 2.0}) + "\n")
        deadline = time.time() + 10
        while read_status(run).phases[0].process.state != "running" and time.time() < deadline:
            time.sleep(0.05)
        assert read_status(run).phases[0].process.pid == holder.pid
    finally:
        holder.kill()
        holder.wait()
