"""``nova status``: where a run or a pipeline stands, read from the files it writes.

Only files are read (metrics.jsonl, alerts.jsonl, nova.pid, checkpoints' trainer_state.json,
config.yaml, pipeline.json), all through ``nova.runs``: no torch, no transformers, so it
answers at once from a second tmux pane, and works while another process appends to them.
Text rendering is in ``nova.monitor.render``.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nova.errors import NovaError
from nova.monitor.progress import latest, step_rate, total_steps
from nova.runs.activity import TRAINING, describe, read_activity
from nova.runs.checkpoints import list_checkpoints
from nova.runs.eval_results import read_eval
from nova.runs.jsonl import number, read_jsonl, read_jsonl_tail
from nova.runs.layout import CHECKPOINTS, PIPELINE, STAGES, RunDir
from nova.runs.process import ProcessInfo, read_process
from nova.runs.record import RunRecord, read_run
from nova.runs.retention import read_retention
from nova.runs.state import check_pipeline, read_pipeline

LAST_ALERTS = 3
MAX_DEPTH = 4  # how deep under a root runs are looked for (nova status with no path, nova ui)
SKIP = {CHECKPOINTS, STAGES, "adapter", "model", "plots", "logs", "__pycache__"}


@dataclass
class PhaseStatus:
    """One phase (one run directory), as ``nova status`` shows it."""

    name: str
    run_dir: str
    status: str  # done, running, failed, stopped, pending
    process: ProcessInfo
    stages: list[str] = field(default_factory=list)
    stage: str | None = None
    step: int | None = None
    total_steps: int | None = None
    total_exact: bool = True
    train_loss: float | None = None
    eval_loss: float | None = None
    eval_step: int | None = None
    tokens_per_second: float | None = None
    seconds_per_step: float | None = None
    eta_seconds: float | None = None
    last_update: float | None = None
    checkpoint: str | None = None
    alert_count: int = 0
    last_alerts: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    note: str | None = None
    started: float | None = None
    ended: float | None = None
    recoveries: int = 0
    # per earlier phase (or retention:<path>): eval_loss_before, eval_loss_after, change (nova.runs.retention)
    forgetting: dict[str, dict[str, Any]] = field(default_factory=dict)
    # GRPO: the newest reward (total and rewards/<name>/mean), kl, completions/mean_length, eval_reward
    rewards: dict[str, float] = field(default_factory=dict)
    # what a live training process is doing now (activity.json): its record, and as text ("smoke prompts 1/2 ...")
    activity: dict[str, Any] | None = None
    doing: str | None = None
    # the phase's eval gate from pipeline.json: passed, forced, failed (messages) (nova.eval.gates)
    gate: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunStatus:
    """A run directory (one phase) or a pipeline output directory (several)."""

    path: str
    kind: str  # run or pipeline
    phases: list[PhaseStatus]
    checked: float
    eval: dict[str, Any] | None = None  # eval.json of the run or pipeline (nova.runs.eval_results)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "checked": self.checked,
                "phases": [p.to_dict() for p in self.phases], "eval": self.eval}


def _record(run: RunDir) -> tuple[RunRecord | None, str | None]:
    """The run's config.yaml if it is there and valid; else why not (status still shows the rest)."""
    if not run.config.is_file():
        return None, None
    try:
        return read_run(run.path), None
    except NovaError as exc:
        return None, exc.message


def phase_status(run_dir: Path, name: str | None = None, entry: dict[str, Any] | None = None,
                 now: float | None = None) -> PhaseStatus:
    """Everything ``nova status`` says about one run directory; ``entry`` is its pipeline.json record."""
    entry = entry or {}
    checked = time.time() if now is None else now
    run = RunDir(run_dir)
    record, bad_config = _record(run)
    records, _ = read_jsonl_tail(run.metrics)  # the newest records: a file of any size is read in milliseconds
    process = read_process(run.path)
    ps = PhaseStatus(name=name or (record.name if record else run.path.name), run_dir=str(run.path),
                     status="pending", process=process,
                     error=entry.get("error") if isinstance(entry.get("error"), str) else None)
    ps.stages = record.stage_names if record else []
    for r in records:
        stage = str(r.get("stage", ""))
        if stage and stage not in ps.stages:
            ps.stages.append(stage)
    ps.status, ps.note = _decide(run, process, entry, bool(records))
    if bad_config:
        ps.note = "; ".join(n for n in (f"config.yaml unreadable: {bad_config}", ps.note) if n)
    if process.state == "running":
        _fill_activity(ps, run, checked)
    ps.started = number(entry.get("started")) or process.started
    ps.ended = number(entry.get("ended")) if ps.status != "running" else None
    ps.recoveries = len(read_jsonl(run.recoveries))
    if records:
        ps.last_update = number(records[-1].get("time"))
        ps.stage = str(records[-1].get("stage", "")) or None
    elif ps.stages and ps.status == "done":
        ps.stage = ps.stages[-1]
    if ps.stage is not None:
        _fill_stage(ps, run, record, [r for r in records if str(r.get("stage", "")) == ps.stage])
    _fill_alerts(ps, run)
    ps.forgetting = _forgetting(run, entry)
    ps.gate = entry.get("gate") if isinstance(entry.get("gate"), dict) else None
    return ps


def _fill_activity(ps: PhaseStatus, run: RunDir, now: float) -> None:
    """What the live process is doing, when it says (activity.json)."""
    record = read_activity(run)
    if record is not None:
        ps.activity = record
        ps.doing = describe(record, now)


def _forgetting(run: RunDir, entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """pipeline.json's forgetting table of the phase, else the run's own retention.json."""
    table = entry.get("forgetting")
    if not isinstance(table, dict):
        table = (read_retention(run) or {}).get("forgetting")
    return {k: v for k, v in (table or {}).items() if isinstance(v, dict)}


def _fill_alerts(ps: PhaseStatus, run: RunDir) -> None:
    alerts = read_jsonl(run.alerts)
    ps.alert_count = len(alerts)
    ps.last_alerts = alerts[-LAST_ALERTS:]
    stopped = [a for a in alerts if a.get("kind") == "early_stop"]
    if stopped and ps.note is None:
        ps.note = "early stop in stage " + ", ".join(f"{a.get('stage')} at step {a.get('step')}" for a in stopped)


def _decide(run: RunDir, process: ProcessInfo, entry: dict[str, Any], started: bool) -> tuple[str, str | None]:
    """done / running / failed / stopped / pending, trusting a live process over anything written."""
    recorded = entry.get("status")
    if process.state == "running":
        return "running", None
    if run.is_complete:
        return "done", None
    if process.state == "other_host":
        return str(recorded or "running"), process.describe()
    if recorded in ("failed", "stopped"):
        return str(recorded), None
    if recorded == "done":
        return "done", "pipeline.json says done, but adapter/ or COMPLETE is missing from the run directory"
    if process.state == "stale":
        return "stopped", "the training process is gone (killed or crashed) and left its pid file"
    if recorded == "running":
        return "stopped", "pipeline.json says running but no training process is alive"
    if started or run.checkpoints_root.is_dir():
        return "stopped", "started but not finished, and no training process is alive"
    return "pending", None


def _fill_stage(ps: PhaseStatus, run: RunDir, record: RunRecord | None, records: list[dict[str, Any]]) -> None:
    stage = ps.stage or ""
    done = list_checkpoints(run.checkpoints(stage))
    if done:
        ps.checkpoint = str(done[-1][1])
    steps = [r["step"] for r in records if isinstance(r.get("step"), int)]
    ps.step = max(([steps[-1]] if steps else []) + ([done[-1][0]] if done else []), default=None)
    config = None
    if record is not None and stage in record.stage_names:
        config = record.phase.stage_list[record.stage_names.index(stage)]
    ps.total_steps, ps.total_exact = total_steps(run, stage, config, record.resolved if record else {})
    if ps.status == "done" and ps.step is not None and ps.total_steps is not None:
        ps.total_steps, ps.total_exact = max(ps.total_steps, ps.step), True
    ps.train_loss, _ = latest(records, "loss")
    ps.eval_loss, ps.eval_step = latest(records, "eval_loss")
    ps.tokens_per_second, _ = latest([r for r in records if "loss" in r], "tokens_per_second")
    ps.rewards = _rewards(records)
    ps.seconds_per_step = step_rate(records)
    training = ps.activity is None or ps.activity.get("what") == TRAINING  # no ETA while it loads, evaluates, ...
    if ps.status == "running" and training and ps.total_steps is not None and ps.step is not None:
        if ps.step >= ps.total_steps:  # the last step is taken: not "eta 0s" while it evaluates and saves
            ps.doing = f"finishing stage {stage}: its last evaluation and checkpoint"
        elif ps.seconds_per_step:
            ps.eta_seconds = (ps.total_steps - ps.step) * ps.seconds_per_step


def _rewards(records: list[dict[str, Any]]) -> dict[str, float]:
    """A GRPO stage's newest reward figures (empty for other methods)."""
    keys = ["reward", *sorted({k for r in records for k in r if k.startswith("rewards/") and k.endswith("/mean")}),
            "kl", "completions/mean_length", "frac_reward_zero_std", "eval_reward"]
    if not any("reward" in r for r in records):
        return {}
    return {k: v for k in keys if (v := latest(records, k)[0]) is not None}


def _phase_dir(root: Path, name: str, recorded: Any) -> Path:
    """pipeline.json stores run dirs as nova saw them (often relative to the project root);
    fall back to <output_dir>/<phase> when status runs from another directory."""
    if isinstance(recorded, str):
        p = Path(recorded)
        if p.is_absolute() or p.exists():
            return p
    return root / name


def read_status(path: Path, now: float | None = None) -> RunStatus:
    """The status of a run directory or a pipeline output directory (one with pipeline.json)."""
    path = Path(path)
    checked = time.time() if now is None else now
    if not path.exists():
        raise NovaError(f"{path} does not exist", hint="give a run directory or a pipeline output directory")
    if not path.is_dir():
        raise NovaError(f"{path} is not a directory", hint="give a run directory or a pipeline output directory")
    pipeline = path / PIPELINE
    if pipeline.exists():
        data = check_pipeline(pipeline)
        phases = [phase_status(_phase_dir(path, name, e.get("run_dir")), name, e, checked)
                  for name, e in data["phases"].items()]
        return RunStatus(str(path), "pipeline", phases, checked, read_eval(RunDir(path)))
    if not RunDir(path).looks_like_run:
        raise NovaError(f"{path} is neither a run directory nor a pipeline output directory",
                        hint="a run directory has metrics.jsonl or config.yaml; a pipeline's has pipeline.json")
    entry = _parent_entry(path)
    return RunStatus(str(path), "run", [phase_status(path, entry[0] if entry else None, entry[1] if entry else None,
                                                     checked)], checked,
                     read_eval(RunDir(path)))


def _parent_entry(run_dir: Path) -> tuple[str, dict[str, Any]] | None:
    """This run's record in the enclosing pipeline.json, if it belongs to a pipeline."""
    data = read_pipeline(run_dir.parent / PIPELINE)
    if data is None:
        return None
    for name, e in data["phases"].items():
        if isinstance(e, dict) and (name == run_dir.name or _same(e.get("run_dir"), run_dir)):
            return name, e
    return None


def _same(recorded: Any, run_dir: Path) -> bool:
    try:
        return isinstance(recorded, str) and Path(recorded).resolve() == run_dir.resolve()
    except OSError:
        return False


def discover(root: Path) -> list[Path]:
    """Pipeline output directories and run directories under ``root`` (a pipeline's phases are not listed
    twice: they are read from its pipeline.json). ``nova status`` with no path and ``nova ui`` list these."""
    found: list[Path] = []
    base = Path(root).resolve()
    for here, dirs, _files in os.walk(base):
        path = Path(here)
        depth = len(path.relative_to(base).parts)
        if path != base and ((path / PIPELINE).is_file() or RunDir(path).looks_like_run):
            found.append(path)
            dirs.clear()
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP and depth < MAX_DEPTH)
    return found


def read_root(root: Path, now: float | None = None) -> list[tuple[Path, RunStatus | NovaError]]:
    """Every run and pipeline under ``root`` with its status (or why it cannot be read), newest first."""
    checked = time.time() if now is None else now
    out: list[tuple[Path, RunStatus | NovaError]] = []
    for path in discover(root):
        try:
            out.append((path, read_status(path, checked)))
        except NovaError as exc:
            out.append((path, exc))
    return sorted(out, key=lambda item: _latest(item[1]), reverse=True)


def _latest(status: RunStatus | NovaError) -> float:
    if isinstance(status, NovaError):
        return 0.0
    return max((t for p in status.phases for t in (p.last_update, p.started, p.ended) if t is not None), default=0.0)
