"""``retention.json`` of a run: holdout losses measured when the phase finished, and its forgetting table.

Written by the training side (nova.train.retention) after the last stage; read here by ``nova
status``, the pipeline state and model cards, without torch. The file holds:

- ``after``: per holdout set, the loss on the phase's final composition. The sets are this
  phase's own holdout (its name), the holdout of every earlier phase of its chain (their names)
  and the user's ``monitor.retention_sets`` (``retention:<path>``);
- ``start``: the retention sets on the phase's start composition (before it trained);
- ``forgetting``: per earlier phase and retention set, ``eval_loss_before`` (the earlier phase's
  own holdout loss when it finished; for a retention set, at this phase's start),
  ``eval_loss_after`` (now) and ``change`` (relative; +0.10 is 10% worse).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nova.files import write_json_atomic
from nova.runs.jsonl import number, read_json
from nova.runs.layout import RunDir

RETENTION_SET_PREFIX = "retention:"


def read_retention(run: RunDir) -> dict[str, Any] | None:
    """The run's retention.json, or None when it has none (or it is unreadable)."""
    data = read_json(run.retention)
    return data if isinstance(data, dict) and isinstance(data.get("after"), dict) else None


def own_loss(run: RunDir, name: str) -> float | None:
    """A phase's own holdout loss when it finished (None without a holdout)."""
    data = read_retention(run)
    entry = (data or {}).get("after", {}).get(name)
    return number(entry.get("eval_loss")) if isinstance(entry, dict) else None


def _row(before: float | None, after: float | None) -> dict[str, Any] | None:
    if before is None or after is None:
        return None
    change = (after - before) / before if before > 0 else 0.0
    return {"eval_loss_before": round(before, 6), "eval_loss_after": round(after, 6), "change": round(change, 4)}


def forgetting_table(after: dict[str, Any], start: dict[str, Any],
                     chain: Sequence[tuple[str, RunDir]]) -> dict[str, dict[str, Any]]:
    """Each earlier phase's holdout loss when it finished against now, and each retention set's at
    this phase's start against now; sets without both numbers are left out."""

    def loss(table: dict[str, Any], key: str) -> float | None:
        entry = table.get(key)
        return number(entry.get("eval_loss")) if isinstance(entry, dict) else None

    out: dict[str, dict[str, Any]] = {}
    for name, run in chain:
        if (row := _row(own_loss(run, name), loss(after, name))) is not None:
            out[name] = row
    for key in after:
        if key.startswith(RETENTION_SET_PREFIX) and (row := _row(loss(start, key), loss(after, key))) is not None:
            out[key] = row
    return out


def write_retention(run: RunDir, phase: str, after: dict[str, Any], start: dict[str, Any],
                    forgetting: dict[str, Any], notes: Sequence[str]) -> Path:
    write_json_atomic(run.retention, {"phase": phase, "after": after, "start": start, "forgetting": forgetting,
                                      "notes": list(notes)})
    return run.retention
