"""Make a Linux Python look like Windows or macOS to nova's own code (tests/test_portability.py).

Two guards, installed before nova is imported:
- imports of POSIX-only modules (fcntl, termios, resource, pwd, grp, ...) made by nova's code
  fail as they would on Windows (``import fcntl`` and ``importlib.import_module("fcntl")``);
- opening or listing anything under ``/proc`` from nova's code fails as on a system without
  procfs (an audit hook sees every ``open``, also through pathlib and ``io``).

Only nova's code is guarded: third-party packages (psutil, huggingface_hub, torch) use these on
Linux and take other branches on Windows and macOS, which this machine cannot run. Every blocked
attempt is recorded and written as JSON at exit, so the test can say exactly what nova reached for.
"""

from __future__ import annotations

import atexit
import builtins
import importlib
import json
import os
import sys
import sysconfig
from pathlib import Path
from typing import Any

POSIX_ONLY = frozenset({"fcntl", "termios", "tty", "pty", "resource", "pwd", "grp", "syslog", "crypt", "spwd",
                        "nis", "posix", "_posixsubprocess", "readline"})
NOVA_SRC = str(Path(__file__).resolve().parents[1] / "src" / "nova")
_STDLIB = tuple(str(Path(p).resolve()) for p in {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]})
_HERE = str(Path(__file__).resolve())

blocked: list[dict[str, str]] = []


def _is_nova_module(name: object) -> bool:
    return isinstance(name, str) and (name == "nova" or name.startswith("nova."))


def _deciding_frame(depth: int) -> Any:
    """The first frame that is not the standard library (pathlib, io, importlib) nor this guard."""
    frame = sys._getframe(depth)
    while frame is not None:
        filename = frame.f_code.co_filename
        resolved = os.path.realpath(filename) if not filename.startswith("<") else filename
        in_stdlib = resolved.startswith(_STDLIB) and "site-packages" not in resolved
        if not in_stdlib and resolved != _HERE and not filename.startswith("<frozen"):
            return frame
        frame = frame.f_back
    return None


def _from_nova(depth: int) -> str | None:
    """The nova module whose code is asking, or None when it is anyone else."""
    frame = _deciding_frame(depth + 1)
    if frame is None:
        return None
    filename = os.path.realpath(frame.f_code.co_filename)
    return frame.f_globals.get("__name__", filename) if filename.startswith(NOVA_SRC) else None


def _refuse_import(name: str, who: str) -> None:
    blocked.append({"kind": "import", "what": name, "by": who})
    raise ModuleNotFoundError(f"No module named {name!r} (POSIX-only, blocked for nova by the portability test)",
                              name=name)


_real_import = builtins.__import__
_real_import_module = importlib.import_module


def _guarded_import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
    if level == 0 and name.split(".")[0] in POSIX_ONLY and globals and _is_nova_module(globals.get("__name__")):
        _refuse_import(name, str(globals.get("__name__")))
    return _real_import(name, globals, locals, fromlist, level)


def _guarded_import_module(name: str, package: str | None = None) -> Any:
    who = sys._getframe(1).f_globals.get("__name__")
    if name.split(".")[0] in POSIX_ONLY and _is_nova_module(who):
        _refuse_import(name, str(who))
    return _real_import_module(name, package)


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event not in ("open", "os.listdir", "os.scandir") or not args:
        return
    target = args[0]
    if isinstance(target, bytes):
        target = target.decode(errors="replace")
    if not isinstance(target, str | os.PathLike) or not os.fspath(target).startswith("/proc"):
        return
    who = _from_nova(2)
    if who is not None:
        blocked.append({"kind": "proc", "what": os.fspath(target), "by": who})
        raise FileNotFoundError(2, "No such file or directory (no /proc for nova in the portability test)",
                                os.fspath(target))


def install(report: Path) -> None:
    builtins.__import__ = _guarded_import
    importlib.import_module = _guarded_import_module
    sys.addaudithook(_audit)
    atexit.register(lambda: report.write_text(json.dumps(blocked, indent=1), encoding="utf-8"))
