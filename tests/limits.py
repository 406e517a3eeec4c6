"""Run the real CLI under a time limit and a memory cap, and check it failed the way users should see.

Hostile inputs (YAML alias bombs, GGUF array bombs, deep nesting) used to hang or eat memory: the
cap (RLIMIT_AS) makes such a regression fail fast as a MemoryError instead of swapping the machine.
Measured: a torch-importing command (``nova infer`` on the tiny model) runs within 2 GiB of address
space; the cap leaves a margin above that.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass

MEMORY_CAP = 3 * 1024**3
TIME_LIMIT = 15.0


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def run_limited(*args: str | bytes, timeout: float = TIME_LIMIT, cwd: str | None = None) -> Outcome:
    """``python -m nova ARGS`` (bytes arguments pass as is: file names that are not UTF-8)."""
    argv: list[str | bytes] = [sys.executable, "-m", "nova", *args]
    start = time.monotonic()
    try:
        result = subprocess.run(argv, capture_output=True, timeout=timeout, preexec_fn=_cap_memory, cwd=cwd,
                                env={**os.environ, "NOVA_DEBUG": "0"})
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"nova {args!r} ran longer than {timeout} s") from exc
    return Outcome(result.returncode, result.stdout.decode("utf-8", "replace"),
                   result.stderr.decode("utf-8", "replace"), time.monotonic() - start)


def assert_one_error(outcome: Outcome, *needles: str) -> str:
    """Exit 2, one ``error:`` line on stderr (plus indented problem lines), no traceback; returns stderr."""
    err = outcome.stderr
    assert outcome.returncode == 2, (outcome.returncode, err)
    assert "Traceback" not in err and "internal error" not in err, err
    lines = err.strip().splitlines()
    assert lines and lines[0].startswith("error: "), err
    assert all(line.startswith("  ") for line in lines[1:]), err
    assert err.isascii(), err
    for needle in needles:
        assert needle in err, (needle, err)
    return err
