"""nova.system, the one place nova meets the OS: Windows' and macOS's branches with the platform simulated."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from nova import system
from nova.train.machinery.resilience import StopRequest, signal_handling


@pytest.fixture
def windows_break(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Windows' SIGBREAK (Ctrl-Break): the real one on Windows, played by SIGUSR1 elsewhere (the signal
    module has SIGBREAK only on Windows). A do-nothing handler first, so a nova that ignored the signal
    fails the test instead of killing the runner."""
    if not hasattr(signal, "SIGBREAK"):
        monkeypatch.setattr(signal, "SIGBREAK", signal.SIGUSR1, raising=False)
    number = int(signal.SIGBREAK)  # type: ignore[attr-defined]
    previous = signal.signal(number, lambda signum, frame: None)
    yield number
    signal.signal(number, previous)


def test_ctrl_break_saves_and_stops_like_ctrl_c(windows_break: int) -> None:
    said: list[str] = []
    before = signal.getsignal(windows_break)
    with signal_handling(StopRequest(saving=True), said.append) as request:  # during training
        assert set(system.stop_signals()) == {signal.SIGINT, signal.SIGTERM, windows_break}
        signal.raise_signal(windows_break)  # os.kill would terminate the process on Windows
        assert request.signal_name == "SIGBREAK"
    assert said == ["SIGBREAK received: saving a checkpoint at the end of this step, then stopping (send it again "
                    "to quit at once)"]
    assert signal.getsignal(windows_break) == before  # the previous handler is back


def test_a_second_ctrl_break_exits_at_once(windows_break: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import nova.train.machinery.resilience as resilience

    def exit_now(code: int) -> None:
        raise SystemExit(code)

    monkeypatch.setattr(resilience.os, "_exit", exit_now)
    with signal_handling(StopRequest(saving=True), lambda line: None) as request:
        signal.raise_signal(signal.SIGINT)
        assert request.signal_name == "SIGINT"
        with pytest.raises(SystemExit) as stopped:
            signal.raise_signal(windows_break)
    assert stopped.value.code == 128 + windows_break


def test_ctrl_break_before_the_first_step_stops_at_once(windows_break: int) -> None:
    from nova.train.machinery.resilience import Interrupted

    with pytest.raises(Interrupted) as stopped, signal_handling(StopRequest(), lambda line: None):
        signal.raise_signal(windows_break)
    assert stopped.value.exit_code == 130 and "nothing to save" in stopped.value.message


@pytest.mark.skipif(sys.platform == "win32", reason="Windows always has SIGBREAK")
def test_without_sigbreak_only_ctrl_c_and_sigterm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(signal, "SIGBREAK", raising=False)
    assert system.stop_signals() == {int(signal.SIGINT): "SIGINT", int(signal.SIGTERM): "SIGTERM"}


def test_the_path_limit_applies_on_windows_without_long_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(system, "on_windows", lambda: False)
    assert system.path_limit() is None  # Linux, macOS
    monkeypatch.setattr(system, "on_windows", lambda: True)
    monkeypatch.setattr(system, "windows_long_paths_enabled", lambda: False)
    assert system.path_limit() == 259
    monkeypatch.setattr(system, "windows_long_paths_enabled", lambda: True)
    assert system.path_limit() is None


def test_an_apple_silicon_mac_has_a_gpu_that_shares_the_ram(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(system, "on_macos", lambda: False)
    assert system.apple_gpu() is None  # not a Mac
    monkeypatch.setattr(system, "on_macos", lambda: True)
    monkeypatch.setattr(system.platform, "machine", lambda: "arm64")
    monkeypatch.setattr(system.platform, "mac_ver", lambda: ("14.5", ("", "", ""), "arm64"))
    monkeypatch.setattr(system, "memory", lambda: (64 * 2**30, 40 * 2**30))
    monkeypatch.setattr(system, "_apple_chip", lambda: "Apple M2 Max")
    gpu = system.apple_gpu()
    assert gpu == system.AppleGpu("Apple M2 Max", "14.5", 64 * 2**30, 40 * 2**30) and gpu.bf16
    assert not system.AppleGpu("Apple M1", "13.6.1", 1, 1).bf16  # torch runs bf16 on mps from macOS 14
    monkeypatch.setattr(system.platform, "machine", lambda: "x86_64")  # an Intel Mac: no mps GPU
    assert system.apple_gpu() is None


def test_liveness_through_psutil(monkeypatch: pytest.MonkeyPatch) -> None:
    assert system.process_alive(os.getpid(), "python") and not system.process_alive(os.getpid(), "no-such-marker")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not system.process_alive(proc.pid, "python") and not system.process_alive(0)

    class Denied:
        def __init__(self, pid: int) -> None:
            raise psutil.AccessDenied(pid)

    monkeypatch.setattr(psutil, "Process", Denied)  # another user's process (macOS, Windows): it exists
    assert system.process_alive(12345)


def test_a_zombie_is_not_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    class Zombie:
        def __init__(self, pid: int) -> None:
            pass

        def status(self) -> str:
            return psutil.STATUS_ZOMBIE

        def cmdline(self) -> list[str]:
            return ["nova", "train"]

    monkeypatch.setattr(psutil, "Process", Zombie)
    assert not system.process_alive(4242)


def test_memory_and_rss_are_read() -> None:
    total, available = system.memory()
    rss = system.rss_bytes()
    assert 0 < available <= total and rss is not None and 0 < rss < total
    assert system.usable_cores() >= 1


def test_windows_has_no_os_kill_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """os.kill(pid, 0) is CTRL_C_EVENT on Windows: liveness must never send it."""
    def refuse(*args: Any) -> None:
        raise AssertionError("os.kill used for a liveness check")

    monkeypatch.setattr(os, "kill", refuse)
    assert system.process_alive(os.getpid(), "python")
