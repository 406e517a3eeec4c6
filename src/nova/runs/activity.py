"""``activity.json``: what a training process is doing right now, for ``nova status`` and the UI.

The run writes it (through ``nova.console.RunLog.activity``) whenever a step that takes a while
starts, counts or ends: ``{"what": "smoke prompts", "done": 1, "total": 2, "since": t0, "time": t,
"pid": p}``; training itself is ``{"what": "training", "stage": "sft"}``. It is removed when the
phase ends. A reader trusts it only while the process named in ``nova.pid`` is alive.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from typing import Any

from nova.files import remove_file, write_status_file
from nova.runs.jsonl import number, read_json
from nova.runs.layout import RunDir

TRAINING = "training"  # the activity while optimizer steps run: status shows the step and the ETA then


def activity_writer(run: RunDir) -> Callable[[dict[str, Any] | None], None]:
    """The function a RunLog calls with the current task (None: nothing under way)."""

    def write(record: dict[str, Any] | None) -> None:
        if not run.path.is_dir():  # a run that has not written anything yet stays unwritten
            return
        if record is None:
            clear_activity(run)
            return
        write_status_file(run.activity, json.dumps({**record, "time": time.time(), "pid": os.getpid()}) + "\n")

    return write


def clear_activity(run: RunDir) -> None:
    with contextlib.suppress(OSError):
        remove_file(run.activity)


def read_activity(run: RunDir) -> dict[str, Any] | None:
    """The activity record if it is there and readable (a torn or odd one is as good as none)."""
    data = read_json(run.activity)
    if not isinstance(data, dict) or not isinstance(data.get("what"), str):
        return None
    return data


def describe(record: dict[str, Any], now: float) -> str:
    """``smoke prompts 1/2 (for 1m05s)``: what, how far, and for how long."""
    from nova.console import human_seconds

    text = str(record["what"])
    done, total = number(record.get("done")), number(record.get("total"))
    if total:
        text += f" {int(done or 0)}/{int(total)}"
    since = number(record.get("since"))
    if since is not None:
        text += f" (for {human_seconds(max(now - since, 0))})"
    return text
