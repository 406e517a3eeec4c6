"""``pipeline.json``: each phase's status, start and end time, and output paths.

Written atomically by the pipeline runner after every change; read by ``nova status``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nova.files import write_json_atomic
from nova.runs.jsonl import read_json
from nova.runs.layout import RunDir


@dataclass(frozen=True)
class PhaseEntry:
    """What pipeline.json records of a phase before it runs."""

    name: str
    run: RunDir
    start_from: str | None


def read_pipeline(path: Path) -> dict[str, Any] | None:
    """pipeline.json as written, or None when missing or unreadable (or not ``{"phases": {...}}``)."""
    data = read_json(path)
    if data is None or not isinstance(data.get("phases"), dict):
        return None
    return data


class PipelineState:
    """The pipeline.json of a pipeline run (``path`` None: a single phase, nothing is written)."""

    def __init__(self, path: Path | None, phases: Sequence[PhaseEntry]) -> None:
        self.path = path
        self.data: dict[str, Any] = (read_pipeline(path) if path is not None else None) or {"phases": {}}
        for p in phases:
            entry = self.data["phases"].setdefault(p.name, {"status": "pending"})
            entry.update({"run_dir": str(p.run.path), "adapter": str(p.run.adapter), "start_from": p.start_from})
            if p.run.is_complete:
                entry["status"] = "done"

    def update(self, name: str, **fields: Any) -> None:
        self.data["phases"][name].update(fields)
        if self.path is not None:
            write_json_atomic(self.path, self.data)
