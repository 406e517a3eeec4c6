"""merge, export and infer read only finished runs: a live one is refused naming its process, an unfinished one
says how it resumes; both in one line, before any model loads (nova.runs.guard)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_nova
from nova.errors import NovaError
from nova.runs.guard import require_finished
from run_fixtures import fake_run

HOLDER = """
import sys, time
from pathlib import Path
from nova.runs.lock import locked
with locked(Path(sys.argv[1]), "run directory"):
    print("held", flush=True)
    time.sleep(120)
"""


def _hold(directory: Path) -> subprocess.Popen[str]:
    """A process holding the run's lock, as nova train does while it trains (its command line says nova)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory), "nova"], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_finished_run_passes_and_an_unfinished_one_is_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = fake_run(tmp_path, tiny_model_dir)
    require_finished(run, "nova merge")
    (run / "COMPLETE").unlink()  # the adapter is there, COMPLETE (written last) is not: smoke prompts still running
    with pytest.raises(NovaError, match="did not finish training") as caught:
        require_finished(run, "nova merge")
    assert f"nova status {run}" in (caught.value.hint or "")


def test_a_live_run_is_refused_with_its_pid_and_host(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = fake_run(tmp_path, tiny_model_dir)  # COMPLETE from an earlier attempt: a --force retrain is under way
    holder = _hold(run)
    try:
        with pytest.raises(NovaError, match=f"being trained right now \\(pid {holder.pid} on host "
                                            f"{socket.gethostname()}\\)") as caught:
            require_finished(run, "nova export")
        assert caught.value.hint == f"wait until it finishes: nova status {run}"
        assert "resume" not in str(caught.value) + (caught.value.hint or "")  # a live run must not be resumed
    finally:
        holder.kill()
        holder.wait()
    require_finished(run, "nova export")  # the kernel released the lock: finished again


def test_an_earlier_phase_being_retrained_is_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    earlier = fake_run(tmp_path, tiny_model_dir, name="first")
    later = fake_run(tmp_path, tiny_model_dir, name="second")
    holder = _hold(earlier)
    try:
        with pytest.raises(NovaError, match=f"{earlier} is being trained"):
            require_finished(later, "nova infer", [earlier])
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("command", [["merge", "--run"], ["export", "--format", "peft", "--out", "OUT", "--run"],
                                     ["infer", "--prompt", "hi", "--model"]], ids=["merge", "export", "infer"])
def test_every_reader_refuses_a_live_run_in_one_line(tmp_path: Path, tiny_model_dir: Path, command: list[str]) -> None:
    run = fake_run(tmp_path, tiny_model_dir)
    holder = _hold(run)
    try:
        args = [str(tmp_path / "out") if a == "OUT" else a for a in command]
        result = run_nova(*args, str(run))
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 2, result.stderr
    assert f"pid {holder.pid} on host" in result.stderr and f"nova status {run}" in result.stderr
    assert result.stderr.strip().count("\n") <= 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs" / "phase-merged").exists()
