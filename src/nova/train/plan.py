"""Run a config: a single phase, or a pipeline of phases where each may start from an earlier one.

A finished phase (``adapter/`` plus a ``COMPLETE`` marker) is skipped on a re-run unless
``force``; a failing phase leaves earlier phases untouched and is marked failed in
``pipeline.json``, so the next run starts again from it.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nova.config.load import LoadedConfig
from nova.config.schema import PhaseConfig, PipelineConfig
from nova.console import RunLog, human_seconds
from nova.errors import NovaError, TrainingStopped
from nova.train.phase import PhaseContext, PhaseResult, chain_refs, is_complete, run_phase, write_json_atomic
from nova.train.resilience import NonFiniteLoss, StopRequest, signal_handling


@dataclass(frozen=True)
class PlannedPhase:
    phase: PhaseConfig
    run_dir: Path
    chain: list[tuple[str, Path]]  # earlier phases (name, run dir), oldest first


def as_pipeline(loaded: LoadedConfig) -> tuple[PipelineConfig, bool]:
    """A single phase runs as a one-phase pipeline writing to the phase's own run directory."""
    if isinstance(loaded.config, PipelineConfig):
        return loaded.config, True
    phase = loaded.config
    if phase.start_from is not None:
        raise NovaError(f"phase '{phase.name}' sets start_from, which only works inside a pipeline config",
                        hint="list both phases under 'phases:' in a pipeline file")
    pipeline = PipelineConfig(output_dir=str(phase.run_dir.parent), phases=[phase])
    return pipeline, False


def plan_phases(pipeline: PipelineConfig, single_dir: Path | None = None) -> list[PlannedPhase]:
    planned = []
    for phase in pipeline.phases:
        run_dir = single_dir if single_dir is not None else pipeline.phase_dir(phase.name)
        chain = [(p.name, pipeline.phase_dir(p.name)) for p in pipeline.chain(phase.name)[:-1]]
        planned.append(PlannedPhase(phase, run_dir, chain))
    return planned


def select(planned: list[PlannedPhase], only: str | None) -> list[PlannedPhase]:
    if only is None:
        return planned
    names = [p.phase.name for p in planned]
    if only not in names:
        raise NovaError(f"no phase named '{only}' in this config", hint=f"phases: {', '.join(names)}")
    return [p for p in planned if p.phase.name == only]


class PipelineState:
    """``pipeline.json``: each phase's status, start and end time, and output paths."""

    def __init__(self, path: Path | None, planned: list[PlannedPhase]) -> None:
        self.path = path
        self.data: dict[str, Any] = {"phases": {}}
        if path is not None and path.exists():
            import json

            with contextlib.suppress(ValueError):
                self.data = json.loads(path.read_text(encoding="utf-8"))
        for p in planned:
            entry = self.data["phases"].setdefault(p.phase.name, {"status": "pending"})
            entry.update({"run_dir": str(p.run_dir), "adapter": str(p.run_dir / "adapter"),
                          "start_from": p.phase.start_from})
            if is_complete(p.run_dir):
                entry["status"] = "done"

    def update(self, name: str, **fields: Any) -> None:
        self.data["phases"][name].update(fields)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path, self.data)


def run_config(loaded: LoadedConfig, *, phase: str | None = None, force: bool = False, fresh: bool = False,
               log: RunLog | None = None, rerun_hint: str | None = None,
               extra_callbacks: list[Any] | None = None) -> list[PhaseResult]:
    """Train every selected phase in order; returns the results of phases that ran or were skipped.

    Interrupted phases resume from their newest complete checkpoint unless ``fresh``; SIGINT and
    SIGTERM save a checkpoint and stop cleanly (TrainingStopped).
    """
    stop = StopRequest()
    log = log or RunLog(Path(_phases_of(loaded)[0].logs_dir) / f"{_log_name(loaded)}.log")
    with signal_handling(stop, log.say):
        return _run_phases(loaded, phase=phase, force=force, fresh=fresh, log=log, stop=stop,
                           rerun_hint=rerun_hint or f"nova train --config {loaded.path}",
                           extra_callbacks=extra_callbacks or [])


def _phases_of(loaded: LoadedConfig) -> list[PhaseConfig]:
    return list(loaded.config.phases) if isinstance(loaded.config, PipelineConfig) else [loaded.config]


def _run_phases(loaded: LoadedConfig, *, phase: str | None, force: bool, fresh: bool, log: RunLog,
                stop: StopRequest, rerun_hint: str, extra_callbacks: list[Any]) -> list[PhaseResult]:
    pipeline, is_pipeline = as_pipeline(loaded)
    single_dir = None if is_pipeline else pipeline.phases[0].run_dir
    planned = select(plan_phases(pipeline, single_dir), phase)
    state = PipelineState(Path(pipeline.output_dir) / "pipeline.json" if is_pipeline else None, planned)
    results = []
    for item in planned:
        name = item.phase.name
        if is_complete(item.run_dir) and not force:
            log.say(f"[{name}] already finished ({item.run_dir / 'adapter'}); skipping (use --force to retrain)")
            results.append(PhaseResult(name, item.run_dir, item.run_dir / "adapter", [], 0.0, skipped=True))
            continue
        chain = chain_refs(item.chain)
        began = False

        def on_start(name: str = name) -> None:
            nonlocal began
            began = True
            state.update(name, status="running", started=time.time(), ended=None, error=None)

        ctx = PhaseContext(item.phase, pipeline.model_for(name), item.run_dir, chain, log,
                           resume=not (fresh or force), stop=stop, rerun_hint=rerun_hint,
                           extra_callbacks=extra_callbacks)
        try:
            result = run_phase(ctx, on_start)
        except BaseException as exc:
            if began:  # a phase that failed its input checks wrote nothing and stays as it was
                status = "stopped" if isinstance(exc, TrainingStopped) and not isinstance(exc, NonFiniteLoss) \
                    else "failed"
                state.update(name, status=status, ended=time.time(), error=f"{type(exc).__name__}: {exc}"[:500])
            raise
        state.update(name, status="done", ended=time.time(), seconds=round(result.seconds, 1))
        log.say(f"[{name}] finished in {human_seconds(result.seconds)}; adapter: {result.adapter_dir}")
        results.append(result)
    return results


def _log_name(loaded: LoadedConfig) -> str:
    return f"{loaded.path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
