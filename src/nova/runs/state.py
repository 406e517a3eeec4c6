"""``pipeline.json``: each phase's status, start and end time, and output paths.

Written atomically by the pipeline runner after every change; read by ``nova status``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nova.errors import NovaError
from nova.files import write_json_atomic
from nova.runs.jsonl import read_json
from nova.runs.layout import PIPELINE, RUN_MARKER, RunDir
from nova.runs.lock import write_marker


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


def pipeline_problem(data: Any) -> str | None:
    """What makes ``data`` other than a pipeline.json nova writes, or None: ``{"phases": {name: {...}}}``,
    each entry an object with its ``status`` (and ``run_dir``, a string, once the phase has one)."""
    if not isinstance(data, dict) or not isinstance(data.get("phases"), dict):
        return 'not {"phases": {...}}'
    junk = [str(name) for name, e in data["phases"].items()
            if not (isinstance(e, dict) and isinstance(e.get("status"), str)
                    and isinstance(e.get("run_dir", ""), str))]
    if junk:
        shown = ", ".join(repr(n) for n in junk[:3]) + (" ..." if len(junk) > 3 else "")
        return f"{len(junk)} of {len(data['phases'])} phase entries are not nova's ({shown})"
    return None


def check_pipeline(path: Path) -> dict[str, Any]:
    """pipeline.json read and checked: a damaged or foreign file is one clear error, never "0 phases"."""
    data = read_json(path)
    problem = pipeline_problem(data) if data is not None else "not a JSON object"
    if problem is not None or data is None:
        raise NovaError(f"{path} is not pipeline state nova can read: {problem}",
                        hint="restore it, or move it away (nova train writes a new one; each phase's run "
                             "directory keeps its own state)")
    return data


def check_pipeline_dir(path: Path) -> None:
    """Refuse a pipeline output directory whose pipeline.json nova did not write (it would be rewritten):
    nova's marker proves a directory is its own; without one (a pipeline from before the marker), only a
    pipeline.json in nova's shape does."""
    state = path / PIPELINE
    if (path / RUN_MARKER).is_file() or not (state.exists() or state.is_symlink()):
        return
    try:
        problem = pipeline_problem(json.loads(state.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        problem = f"unreadable ({type(exc).__name__})"
    if problem is not None:
        raise NovaError(f"pipeline directory {path} holds a {PIPELINE} that nova did not write ({problem}; "
                        f"no {RUN_MARKER})", hint="choose another pipeline output_dir, or move that file away")


class PipelineState:
    """The pipeline.json of a pipeline run (``path`` None: a single phase, nothing is written)."""

    def __init__(self, path: Path | None, phases: Sequence[PhaseEntry]) -> None:
        self.path = path
        exists = path is not None and (path.exists() or path.is_symlink())
        self.data: dict[str, Any] = check_pipeline(path) if exists and path is not None else {"phases": {}}
        for p in phases:
            entry = self.data["phases"].setdefault(p.name, {"status": "pending"})
            entry.update({"run_dir": str(p.run.path), "adapter": str(p.run.adapter), "start_from": p.start_from})
            if p.run.is_complete:
                entry["status"] = "done"

    def update(self, name: str, **fields: Any) -> None:
        self.data["phases"][name].update(fields)
        if self.path is not None:
            write_marker(self.path.parent, "pipeline")  # nova's own from its first write (nova.runs.lock)
            write_json_atomic(self.path, self.data)
