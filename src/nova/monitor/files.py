"""Reading the files a run writes while another process may be appending to them.

A reader can see a line that is still being written, so unreadable lines are skipped, never fatal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRICS = "metrics.jsonl"
ALERTS = "alerts.jsonl"
PID_FILE = "nova.pid"
PLOT = "plots/loss.png"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every JSON object in ``path`` (missing file: none; a torn last line: skipped)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file, or None when it is missing, half-written or not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def number(value: Any) -> float | None:
    """A JSON number as float (bools and strings are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
