"""What the UI shows of the runs under its root, read through nova's own readers (no new parsers).

Status comes from ``nova.monitor.status`` (what ``nova status`` prints), files from
``nova.runs`` (metrics and alerts through the torn-line-safe JSONL reader, config.yaml through
the config loader, fingerprints from DONE records and checkpoint seals). Every path is taken
relative to the root and checked to stay inside it. No torch: a page answers at once while a
run trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nova.config.load import read_yaml
from nova.errors import NovaError
from nova.monitor.status import PhaseStatus, discover, read_status
from nova.runs.card import CARD
from nova.runs.checkpoints import list_checkpoints, seal_fingerprint
from nova.runs.fingerprint import Fingerprint, flatten
from nova.runs.jsonl import read_json, read_jsonl
from nova.runs.layout import EVAL_RESULTS, RunDir
from nova.ui.security import inside
from nova.ui.series import charts

# ``nova eval`` writes this beside a run: {"models": [{"name", "scores": {task: value}}], ...} (nova.runs.eval_results).
EVAL_FILE = EVAL_RESULTS
TEXT_LIMIT = 256 * 1024  # a config or model card larger than this is cut (and says so)
STATES = {"done": "finished", "running": "running", "failed": "failed", "stopped": "interrupted",
          "pending": "pending"}


def relative(root: Path, path: Path | str) -> str | None:
    """``path`` relative to the root, or None when it lies outside (then the UI does not open it)."""
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None


def phase_summary(root: Path, ps: PhaseStatus) -> dict[str, Any]:
    """One phase as the runs page shows it: ``nova status``'s fields plus state words and a link."""
    out = ps.to_dict()
    out["state"] = STATES.get(ps.status, ps.status)
    out["alive"] = ps.process.state == "running"
    out["process"] = ps.process.describe()
    out["rel"] = relative(root, ps.run_dir)
    return out


def overview(root: Path) -> dict[str, Any]:
    """Every run and pipeline under the root; one that cannot be read is listed with why."""
    entries = []
    for path in discover(root):
        rel = relative(root, path) or str(path)
        try:
            status = read_status(path)
        except NovaError as exc:
            entries.append({"path": rel, "kind": "unreadable", "error": exc.message, "phases": []})
            continue
        entries.append({"path": rel, "kind": status.kind,
                        "phases": [phase_summary(root, p) for p in status.phases]})
    return {"root": str(root.resolve()), "runs": entries}


def _text(path: Path) -> str | None:
    """A small text file, cut at TEXT_LIMIT with a note (a config or card, never weights)."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(TEXT_LIMIT + 1)
    except OSError:
        return None
    text = raw[:TEXT_LIMIT].decode("utf-8", errors="replace")
    return text + (f"\n... (cut at {TEXT_LIMIT} bytes)" if len(raw) > TEXT_LIMIT else "")


def fingerprints(run: RunDir, stages: list[str]) -> dict[str, dict[str, Any]]:
    """Each stage's fingerprint: from its DONE record when it finished, else its newest sealed checkpoint."""
    out = {}
    for stage in stages:
        raw = (read_json(run.stage_done(stage)) or {}).get("fingerprint")
        if raw is None:
            done = list_checkpoints(run.checkpoints(stage))
            raw = seal_fingerprint(done[-1][1]) if done else None
        fp = Fingerprint.from_dict(raw)
        if fp is not None:
            out[stage] = {"digest": fp.digest, "values": fp.values}
    return out


def config_view(run: RunDir) -> dict[str, Any]:
    """config.yaml as written, and flattened (``training.learning_rate``: value) for the compare page."""
    text = _text(run.config)
    flat: dict[str, Any] = {}
    error = None
    if text is not None:
        try:
            data, _ = read_yaml(run.config)
            flat = {k: v for k, v in flatten("", data).items() if not k.startswith("_")}
        except NovaError as exc:
            error = exc.lines()[0]
    return {"text": text, "flat": flat, "error": error}


def run_view(root: Path, rel: str) -> dict[str, Any]:
    """Everything the run page shows of one run directory under the root."""
    path = inside(root, rel)
    run = RunDir(path)
    if not path.is_dir() or not run.looks_like_run:
        raise NovaError(f"{rel} is not a run directory under the ui root", hint="pick a run on the runs page")
    phase = read_status(path).phases[0]
    records = read_jsonl(run.metrics)
    card = run.output / CARD
    return {
        "rel": relative(root, path), "status": phase_summary(root, phase), "charts": charts(records),
        "metrics_count": len(records), "alerts": read_jsonl(run.alerts),
        "data_reports": {s: r for s in phase.stages if (r := read_json(run.data_report(s))) is not None},
        "smoke": read_jsonl(run.smoke), "eval": read_json(path / EVAL_FILE), "config": config_view(run),
        "fingerprints": fingerprints(run, phase.stages), "card": _text(card) if card.is_file() else None,
    }
