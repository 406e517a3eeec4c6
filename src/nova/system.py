"""What nova asks of the operating system, answered the same way on Linux, Windows and macOS.

Every fact about processes, memory, the CPU, Apple's GPU, signals and path lengths comes from
here, so no other module reads ``/proc``, imports a POSIX-only module (fcntl, resource, pwd,
termios) or branches on the platform itself. Processes and memory go through psutil, which
has a native backend on each platform; psutil is imported inside the functions, so
``nova --help`` never pays for it.

The platform tests (``on_windows``, ``on_macos``) are functions rather than constants so the
tests can simulate another platform where the code branches on it.
"""

from __future__ import annotations

import os
import platform
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

# Windows refuses a path of 260 characters or more (MAX_PATH, NUL included) unless long paths
# are enabled in the registry (and Python, 3.6+, opts in to them by its manifest).
WINDOWS_MAX_PATH = 259
# x86 CPU flags that give native bf16 arithmetic (what makes bf16 on the CPU fast, docs/benchmarks.md).
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def on_windows() -> bool:
    return sys.platform == "win32"


def on_macos() -> bool:
    return sys.platform == "darwin"


def on_linux() -> bool:
    return sys.platform.startswith("linux")


def process_alive(pid: int, marker: str = "nova") -> bool:
    """True when ``pid`` exists, has not exited, and its command line mentions ``marker``.

    The command-line check guards against pid reuse: a crashed run's pid may belong to an
    unrelated process by now. A process of another user whose command line cannot be read
    is taken as alive (it exists; refusing to say so would hide a live run). psutil, not
    ``os.kill(pid, 0)``: on Windows signal 0 is CTRL_C_EVENT and would interrupt the process.
    """
    if pid <= 0:
        return False
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:  # exited, not yet reaped by its parent
            return False
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True
    return any(marker in part.lower() for part in cmdline)


def process_name(pid: int) -> str | None:
    """The short program name of ``pid`` (``ollama``, ``python``), or None when it cannot be read."""
    import psutil

    try:
        return psutil.Process(pid).name() or None
    except (psutil.Error, OSError):
        return None


def rss_bytes() -> int | None:
    """This process's resident set size, or None where the platform does not say."""
    import psutil

    try:
        return int(psutil.Process().memory_info().rss)
    except (psutil.Error, OSError):
        return None


def memory() -> tuple[int, int]:
    """(total, available) bytes of RAM; on Apple Silicon this is the unified memory the GPU shares."""
    import psutil

    vm = psutil.virtual_memory()
    return int(vm.total), int(vm.available)


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the platform has one)."""
    import psutil

    try:
        return len(psutil.Process().cpu_affinity() or []) or (os.cpu_count() or 1)
    except (AttributeError, psutil.Error, OSError):  # macOS has no affinity
        return os.cpu_count() or 1


def cpu_description() -> tuple[str, tuple[str, ...]]:
    """(model name, the CPU's native bf16 flags); empty where the platform does not list flags.

    Only Linux lists x86 feature flags for a program to read (``/proc/cpuinfo``); Windows and
    macOS do not without running CPUID, so there the answer is "no native bf16 known" and the
    CPU computes in fp32, which is always correct (only slower on a CPU that has bf16).
    """
    if not on_linux():
        return platform.processor() or platform.machine(), ()
    return parse_cpuinfo(_read_text("/proc/cpuinfo"))


def parse_cpuinfo(text: str) -> tuple[str, tuple[str, ...]]:
    """(model name, bf16 flags) from the text of Linux's /proc/cpuinfo."""
    lines = text.splitlines()
    flag_line = next((ln for ln in lines if ln.startswith("flags")), "")
    flags = set(flag_line.partition(":")[2].split())
    model = next((ln.partition(":")[2].strip() for ln in lines if ln.startswith("model name")), "")
    return model, tuple(sorted(flags & BF16_FLAGS))


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


@dataclass(frozen=True)
class AppleGpu:
    """The GPU of an Apple Silicon Mac, as torch's ``mps`` device sees it: it shares the RAM."""

    chip: str
    macos: str
    unified_total: int
    unified_available: int

    @property
    def bf16(self) -> bool:
        """torch runs bf16 on mps from macOS 14 (Sonoma) on."""
        return macos_at_least(self.macos, 14)

    def to_dict(self) -> dict[str, object]:
        return {"chip": self.chip, "macos": self.macos, "unified_total_bytes": self.unified_total,
                "unified_available_bytes": self.unified_available, "bf16": self.bf16}


def macos_at_least(version: str, major: int) -> bool:
    head = version.split(".")[0]
    return head.isdigit() and int(head) >= major


def apple_gpu() -> AppleGpu | None:
    """The Apple Silicon GPU when this is an arm64 Mac (read without importing torch), else None."""
    if not (on_macos() and platform.machine() == "arm64"):
        return None
    total, available = memory()
    return AppleGpu(_apple_chip(), platform.mac_ver()[0], total, available)


def _apple_chip() -> str:
    """'Apple M2 Max' from sysctl; 'Apple Silicon' when it cannot be read."""
    import subprocess

    try:
        out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                             timeout=2, check=False)
    except (OSError, subprocess.SubprocessError):
        return "Apple Silicon"
    return out.stdout.strip() or "Apple Silicon"


def stop_signals() -> dict[int, str]:
    """The signals that ask a run to save and stop: Ctrl-C, SIGTERM, and on Windows Ctrl-Break.

    Windows delivers Ctrl-C as SIGINT and Ctrl-Break (and closing the console) as SIGBREAK;
    SIGTERM is only ever raised by the process itself there, but handling it costs nothing.
    """
    out = {int(signal.SIGINT): "SIGINT", int(signal.SIGTERM): "SIGTERM"}
    brk = getattr(signal, "SIGBREAK", None)
    if brk is not None:
        out[int(brk)] = "SIGBREAK"
    return out


def own_process_group() -> dict[str, object]:
    """``subprocess.Popen`` arguments that start a child in its own process group, so a Ctrl-C in the
    terminal that launched it reaches only the launcher (nova ui stops its children with ask_to_stop)."""
    if on_windows():
        import subprocess

        return {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200)}
    return {"start_new_session": True}


def ask_to_stop(pid: int) -> str:
    """Ask a nova process to save and stop, as Ctrl-C would (SIGTERM; Ctrl-Break on Windows, the signal a
    process group started by own_process_group can receive there). Returns the signal's name."""
    if on_windows():
        os.kill(pid, getattr(signal, "CTRL_BREAK_EVENT", 1))
        return "Ctrl-Break"
    os.kill(pid, signal.SIGTERM)
    return "SIGTERM"


def path_limit() -> int | None:
    """The longest path the file system calls accept here, or None when there is no practical limit."""
    if not on_windows() or windows_long_paths_enabled():
        return None
    return WINDOWS_MAX_PATH


def windows_long_paths_enabled() -> bool:
    """Whether Windows' LongPathsEnabled is set (HKLM\\SYSTEM\\CurrentControlSet\\Control\\FileSystem)."""
    try:
        import winreg  # Windows only; never imported elsewhere
    except ImportError:
        return False
    try:
        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE,  # type: ignore[attr-defined]
                            r"SYSTEM\CurrentControlSet\Control\FileSystem") as key:
            value, _ = winreg.QueryValueEx(key, "LongPathsEnabled")  # type: ignore[attr-defined]
    except OSError:
        return False
    return bool(value)


LONG_PATHS_FIX = (r"enable long paths once, as administrator: New-ItemProperty -Path "
                  r"HKLM:\SYSTEM\CurrentControlSet\Control\FileSystem -Name LongPathsEnabled -Value 1 "
                  r"-PropertyType DWORD -Force")


def read_only_filesystem(path: Path | str) -> bool:
    """True when ``path`` lies on a filesystem mounted read-only (POSIX statvfs; False where it cannot tell)."""
    statvfs = getattr(os, "statvfs", None)
    if statvfs is None:  # Windows
        return False
    try:
        return bool(statvfs(path).f_flag & getattr(os, "ST_RDONLY", 1))
    except OSError:
        return False



def user_cache_dir() -> Path:
    """nova's directory in the user's cache (weight hashes, probe calibrations): ``$NOVA_CACHE_DIR``, else
    ``%LOCALAPPDATA%\\nova`` on Windows, else ``$XDG_CACHE_HOME/nova`` or ``~/.cache/nova``."""
    if os.environ.get("NOVA_CACHE_DIR"):
        return Path(os.environ["NOVA_CACHE_DIR"]).expanduser()
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "nova"
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "nova"


def hub_client() -> str:
    """The Hugging Face command line client installed here: ``hf`` (huggingface_hub 0.34 and later ship it;
    ``huggingface-cli`` is deprecated there), else ``huggingface-cli``."""
    import shutil
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = (int(x) for x in version("huggingface_hub").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        major, minor = 0, 0
    return "hf" if shutil.which("hf") or (major, minor) >= (0, 34) else "huggingface-cli"
