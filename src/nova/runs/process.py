"""The training process of a run directory: ``nova.pid`` while it trains, and whether it is alive."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from nova.runs.jsonl import number, read_json
from nova.runs.layout import RunDir
from nova.system import process_alive


@dataclass
class ProcessInfo:
    """The training process named in ``nova.pid``; state: running, stale, none, other_host."""

    state: str
    pid: int | None = None
    host: str | None = None
    started: float | None = None

    def describe(self) -> str:
        if self.state == "running":
            return f"running (pid {self.pid})"
        if self.state == "stale":
            return "not running (stale pid file)"
        if self.state == "other_host":
            return f"pid {self.pid} on host {self.host} (cannot check from here)"
        return "not running"


def pid_alive(pid: int) -> bool:
    """True when ``pid`` exists and is a nova process (its command line mentions nova).

    Asked through psutil (nova.system), the same on Linux, macOS and Windows; the command-line
    check guards against pid reuse by an unrelated process after a crash.
    """
    return process_alive(pid, "nova")


def read_process(run_dir: Path) -> ProcessInfo:
    run = RunDir(run_dir)
    data = read_json(run.pid_file)
    if data is None:
        return ProcessInfo("stale" if run.pid_file.exists() else "none")
    pid = data.get("pid")
    host = data.get("host") if isinstance(data.get("host"), str) else None
    started = number(data.get("started"))
    if not isinstance(pid, int) or isinstance(pid, bool):
        return ProcessInfo("stale", None, host, started)
    if host and host != socket.gethostname():
        return ProcessInfo("other_host", pid, host, started)
    return ProcessInfo("running" if pid_alive(pid) else "stale", pid, host, started)
