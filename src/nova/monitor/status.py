"""``nova status``: where a run or a pipeline stands, read from the files it writes.

Only files are read (metrics.jsonl, alerts.jsonl, nova.pid, checkpoints' trainer_state.json,
config.yaml, pipeline.json): no torch, no transformers, so it answers at once from a second
tmux pane, and works while another process is appending to those files.
"""

from __future__ import annotations

import math
import os
import re
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nova.errors import NovaError
from nova.monitor.files import ALERTS, METRICS, PID_FILE, number, read_json, read_jsonl

PIPELINE = "pipeline.json"
COMPLETE = "COMPLETE"
ETA_WINDOW = 10  # training logs used for the step rate
LAST_ALERTS = 3
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class ProcessInfo:
    """The training process named in ``nova.pid``; state: running, stale, none, other_host."""

    state: str
    pid: int | None = None
    host: str | None = None
    started: float | None = None

    def describe(self) -> str:
        if self.state == "running":
            return f"running (pid {self.pid})"
        if self.state == "stale":
            return "not running (stale pid file)"
        if self.state == "other_host":
            return f"pid {self.pid} on host {self.host} (cannot check from here)"
        return "not running"


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunStatus:
    """A run directory (one phase) or a pipeline output directory (several)."""

    path: str
    kind: str  # run or pipeline
    phases: list[PhaseStatus]
    checked: float

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "checked": self.checked,
                "phases": [p.to_dict() for p in self.phases]}


# -- process liveness ---------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """True when ``pid`` exists and is a nova process (its command line mentions nova).

    The command-line check guards against pid reuse: a crashed run's pid may belong to
    an unrelated process by now.
    """
    if pid <= 0:  # os.kill(0, ...) would address our own process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except OSError:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no procfs (macOS): trust os.kill
    except OSError:
        return False
    return b"nova" in cmdline.lower()  # a zombie (exited, not yet reaped) has an empty command line


def read_process(run_dir: Path) -> ProcessInfo:
    data = read_json(run_dir / PID_FILE)
    if data is None:
        return ProcessInfo("stale" if (run_dir / PID_FILE).exists() else "none")
    pid = data.get("pid")
    host = data.get("host") if isinstance(data.get("host"), str) else None
    started = number(data.get("started"))
    if not isinstance(pid, int) or isinstance(pid, bool):
        return ProcessInfo("stale", None, host, started)
    if host and host != socket.gethostname():
        return ProcessInfo("other_host", pid, host, started)
    return ProcessInfo("running" if pid_alive(pid) else "stale", pid, host, started)


# -- run directory contents ---------------------------------------------------------------------


def stage_names_from_config(config: dict[str, Any]) -> list[str]:
    """Stage directory names as nova.train.phase.stage_names makes them (sft, dpo, sft-2)."""
    methods = [str(s.get("method", "sft")) for s in config.get("stages") or [] if isinstance(s, dict)]
    if not methods:
        methods = [str(config.get("method", "sft"))]
    names: list[str] = []
    for base in methods:
        n = 1
        while (base if n == 1 else f"{base}-{n}") in names:
            n += 1
        names.append(base if n == 1 else f"{base}-{n}")
    return names


def _stage_configs(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    stages = [s for s in config.get("stages") or [] if isinstance(s, dict)] or [config]
    return dict(zip(stage_names_from_config(config), stages, strict=False))


def read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def checkpoints(run_dir: Path, stage: str) -> list[tuple[int, Path, dict[str, Any]]]:
    """Complete checkpoints of a stage (sealed, all files there: what a resume would take), oldest first."""
    from nova.train.resilience import checkpoint_problem  # file checks only: no torch
    root = run_dir / "checkpoints" / stage
    out = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    for entry in entries:
        m = _CHECKPOINT.match(entry.name)
        if not m or not entry.is_dir():
            continue
        state = read_json(entry / "trainer_state.json") if checkpoint_problem(entry) is None else None
        if state is not None:
            out.append((int(m.group(1)), entry, state))
    return sorted(out, key=lambda c: c[0])


def total_steps(run_dir: Path, stage: str, config: dict[str, Any]) -> tuple[int | None, bool]:
    """The stage's max_steps and whether it is exact: from the newest checkpoint's trainer_state.json,
    else training.max_steps in config.yaml, else estimated from the data report and epochs."""
    done = checkpoints(run_dir, stage)
    if done:
        steps = done[-1][2].get("max_steps")
        if isinstance(steps, int) and steps > 0:
            return steps, True
    stage_cfg = _stage_configs(config).get(stage, {})
    training = stage_cfg.get("training") if isinstance(stage_cfg.get("training"), dict) else {}
    max_steps = training.get("max_steps")
    if isinstance(max_steps, int) and max_steps > 0:
        return max_steps, True
    report = read_json(run_dir / "stages" / stage / "data_report.json") or {}
    records = report.get("train_records")
    fitted = ((config.get("_resolved") or {}).get("auto_fit") or {}).get(stage) or {}
    micro = fitted.get("micro_batch_size") or training.get("micro_batch_size", 4)
    accum = fitted.get("gradient_accumulation_steps") or training.get("gradient_accumulation_steps", 4)
    epochs = number(training.get("num_epochs", 1.0)) or 1.0
    if not isinstance(records, int) or records <= 0 or not micro or not accum:
        return None, False
    per_epoch = max(math.ceil(math.ceil(records / micro) / accum), 1)
    return math.ceil(per_epoch * epochs), False


def is_complete(run_dir: Path) -> bool:
    """The same test nova.train.phase.is_complete makes (not imported: it would pull in the trainer)."""
    return (run_dir / COMPLETE).exists() and (run_dir / "adapter" / "adapter_config.json").exists()


def step_rate(records: list[dict[str, Any]]) -> float | None:
    """Seconds per step over the last few training logs of one stage (evals and saves included,
    as they will recur), counting only logs since the last resume."""
    train = [r for r in records if "loss" in r and isinstance(r.get("step"), int) and number(r.get("time"))]
    recent: list[dict[str, Any]] = []
    for r in reversed(train):
        if recent and r["step"] >= recent[-1]["step"]:
            break  # steps went back: a resume, older logs belong to another session
        recent.append(r)
        if len(recent) > ETA_WINDOW:
            break
    if len(recent) < 2:
        return None
    newest, oldest = recent[0], recent[-1]
    steps = newest["step"] - oldest["step"]
    seconds = float(newest["time"]) - float(oldest["time"])
    return seconds / steps if steps > 0 and seconds > 0 else None


def _latest(records: list[dict[str, Any]], key: str) -> tuple[float | None, int | None]:
    for r in reversed(records):
        value = number(r.get(key))
        if value is not None:
            return value, r.get("step") if isinstance(r.get("step"), int) else None
    return None, None


def phase_status(run_dir: Path, name: str | None = None, entry: dict[str, Any] | None = None) -> PhaseStatus:
    """Everything ``nova status`` says about one run directory; ``entry`` is its pipeline.json record."""
    entry = entry or {}
    config = read_config(run_dir)
    records = read_jsonl(run_dir / METRICS)
    process = read_process(run_dir)
    ps = PhaseStatus(name=name or str(config.get("name") or run_dir.name), run_dir=str(run_dir), status="pending",
                     process=process, error=entry.get("error") if isinstance(entry.get("error"), str) else None)
    ps.stages = stage_names_from_config(config) if config else []
    for r in records:
        stage = str(r.get("stage", ""))
        if stage and stage not in ps.stages:
            ps.stages.append(stage)
    ps.status, ps.note = _decide(run_dir, process, entry, bool(records))
    ps.started = number(entry.get("started")) or process.started
    ps.ended = number(entry.get("ended")) if ps.status != "running" else None
    ps.recoveries = len(read_jsonl(run_dir / "recoveries.jsonl"))
    if records:
        ps.last_update = number(records[-1].get("time"))
        ps.stage = str(records[-1].get("stage", "")) or None
    elif ps.stages and ps.status == "done":
        ps.stage = ps.stages[-1]
    if ps.stage is not None:
        _fill_stage(ps, run_dir, config, [r for r in records if str(r.get("stage", "")) == ps.stage])
    alerts = read_jsonl(run_dir / ALERTS)
    ps.alert_count = len(alerts)
    ps.last_alerts = alerts[-LAST_ALERTS:]
    stopped = [a for a in alerts if a.get("kind") == "early_stop"]
    if stopped and ps.note is None:
        ps.note = "early stop in stage " + ", ".join(f"{a.get('stage')} at step {a.get('step')}" for a in stopped)
    return ps


def _decide(run_dir: Path, process: ProcessInfo, entry: dict[str, Any], started: bool) -> tuple[str, str | None]:
    """done / running / failed / stopped / pending, trusting a live process over anything written."""
    recorded = entry.get("status")
    if process.state == "running":
        return "running", None
    if is_complete(run_dir):
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
    if started or (run_dir / "checkpoints").is_dir():
        return "stopped", "started but not finished, and no training process is alive"
    return "pending", None


def _fill_stage(ps: PhaseStatus, run_dir: Path, config: dict[str, Any], records: list[dict[str, Any]]) -> None:
    stage = ps.stage or ""
    done = checkpoints(run_dir, stage)
    if done:
        ps.checkpoint = str(done[-1][1])
    steps = [r["step"] for r in records if isinstance(r.get("step"), int)]
    ps.step = max(([steps[-1]] if steps else []) + ([done[-1][0]] if done else []), default=None)
    ps.total_steps, ps.total_exact = total_steps(run_dir, stage, config)
    if ps.status == "done" and ps.step is not None and ps.total_steps is not None:
        ps.total_steps, ps.total_exact = max(ps.total_steps, ps.step), True
    ps.train_loss, _ = _latest(records, "loss")
    ps.eval_loss, ps.eval_step = _latest(records, "eval_loss")
    ps.tokens_per_second, _ = _latest([r for r in records if "loss" in r], "tokens_per_second")
    ps.seconds_per_step = step_rate(records)
    if ps.status == "running" and ps.seconds_per_step and ps.total_steps is not None and ps.step is not None:
        ps.eta_seconds = max(ps.total_steps - ps.step, 0) * ps.seconds_per_step


# -- text ------------------------------------------------------------------------------------


def _ago(seconds: float) -> str:
    from nova.console import human_seconds

    return f"{human_seconds(max(seconds, 0))} ago"


def phase_lines(ps: PhaseStatus, now: float) -> list[str]:
    """The text block of one phase: one fact per line, missing facts left out."""
    from nova.console import human_seconds

    head = f"{ps.name}: {ps.status}"
    if ps.process.state != "none" or ps.status in ("running", "stopped"):
        head += f" - process {ps.process.describe()}"
    out = [head, f"  run dir:    {ps.run_dir}"]
    if ps.note:
        out.append(f"  note:       {ps.note}")
    if ps.stage is not None:
        where = f"{ps.stage}"
        if ps.stage in ps.stages and len(ps.stages) > 1:
            where += f" (stage {ps.stages.index(ps.stage) + 1} of {len(ps.stages)}: {', '.join(ps.stages)})"
        if ps.step is not None:
            total = "" if ps.total_steps is None else f" of {'' if ps.total_exact else '~'}{ps.total_steps}"
            pct = f" ({100 * ps.step / ps.total_steps:.0f}%)" if ps.total_steps else ""
            where += f", step {ps.step}{total}{pct}"
        out.append(f"  stage:      {where}")
    losses = []
    if ps.train_loss is not None:
        losses.append(f"train {ps.train_loss:.4f}")
    if ps.eval_loss is not None:
        losses.append(f"eval {ps.eval_loss:.4f} (step {ps.eval_step})")
    if losses:
        out.append(f"  loss:       {', '.join(losses)}")
    speed = []
    if ps.tokens_per_second is not None:
        speed.append(f"{ps.tokens_per_second:.0f} tokens/s")
    if ps.seconds_per_step is not None:
        speed.append(f"{ps.seconds_per_step:.2f} s/step")
    if speed:
        out.append(f"  speed:      {', '.join(speed)}")
    if ps.eta_seconds is not None:
        out.append(f"  eta:        {human_seconds(ps.eta_seconds)} to the end of stage {ps.stage}")
    if ps.checkpoint:
        out.append(f"  checkpoint: {ps.checkpoint}")
    if ps.last_update is not None:
        out.append(f"  updated:    {_ago(now - ps.last_update)} (last metrics line)")
    if ps.started is not None:
        took = f", took {human_seconds(ps.ended - ps.started)}" if ps.ended and ps.ended >= ps.started else ""
        out.append(f"  started:    {_ago(now - ps.started)}{took}")
    if ps.recoveries:
        out.append(f"  recoveries: {ps.recoveries} (out-of-memory retries with a smaller batch; see recoveries.jsonl)")
    if ps.error:
        out.append(f"  error:      {ps.error}")
    if ps.alert_count:
        out.append(f"  alerts:     {ps.alert_count}, latest:")
        for a in ps.last_alerts:
            t = number(a.get("time"))
            stamp = time.strftime("%H:%M:%S", time.localtime(t)) if t is not None else "?"
            out.append(f"    {stamp} {a.get('message', a.get('kind', '?'))}")
    else:
        out.append("  alerts:     none")
    return out


def status_lines(status: RunStatus) -> list[str]:
    """All of ``nova status`` as ASCII lines."""
    out = []
    if status.kind == "pipeline":
        counts: dict[str, int] = {}
        for p in status.phases:
            counts[p.status] = counts.get(p.status, 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in counts.items())
        out.append(f"pipeline {status.path}: {len(status.phases)} phases ({summary})")
    for p in status.phases:
        out.extend(phase_lines(p, status.checked))
    return [line.encode("ascii", "replace").decode("ascii") for line in out]


# -- entry point -------------------------------------------------------------------------------


def _looks_like_run(path: Path) -> bool:
    return any((path / n).exists() for n in (METRICS, "config.yaml", COMPLETE, PID_FILE, "checkpoints", "stages"))


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
        data = read_json(pipeline)
        if data is None or not isinstance(data.get("phases"), dict):
            raise NovaError(f"{pipeline} is not readable pipeline state", hint="it should hold {\"phases\": {...}}")
        phases = [phase_status(_phase_dir(path, name, e.get("run_dir")), name, e)
                  for name, e in data["phases"].items() if isinstance(e, dict)]
        return RunStatus(str(path), "pipeline", phases, checked)
    if not _looks_like_run(path):
        raise NovaError(f"{path} is neither a run directory nor a pipeline output directory",
                        hint="a run directory has metrics.jsonl or config.yaml; a pipeline's has pipeline.json")
    entry = _parent_entry(path)
    return RunStatus(str(path), "run", [phase_status(path, entry[0] if entry else None, entry[1] if entry else None)],
                     checked)


def _parent_entry(run_dir: Path) -> tuple[str, dict[str, Any]] | None:
    """This run's record in the enclosing pipeline.json, if it belongs to a pipeline."""
    data = read_json(run_dir.parent / PIPELINE)
    if data is None or not isinstance(data.get("phases"), dict):
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
