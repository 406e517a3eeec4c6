"""Run a config: a single phase, or a pipeline of phases where each may start from an earlier one.

A finished phase (``adapter/`` plus a ``COMPLETE`` marker) is skipped on a re-run unless
``force``; a failing phase leaves earlier phases untouched and is marked failed in
``pipeline.json``, so the next run starts again from it.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nova.config.load import LoadedConfig
from nova.console import RunLog, human_seconds, speaking
from nova.errors import TrainingStopped
from nova.model.trained import trained_kind
from nova.plan import Plan, PlannedPhase, make_plan
from nova.runs.activity import activity_writer, clear_activity
from nova.runs.lock import locked
from nova.runs.state import PhaseEntry, PipelineState, check_pipeline_dir
from nova.train.context import PhaseResult, PhaseRun
from nova.train.machinery import distributed
from nova.train.machinery.resilience import NonFiniteLoss, StopRequest, signal_handling
from nova.train.phase import run_phase


@dataclass(frozen=True)
class RunOptions:
    """How ``nova train`` was asked to treat earlier work (its flags)."""

    force: bool = False  # retrain finished phases
    fresh: bool = False  # ignore checkpoints of unfinished phases
    resume_with_changes: bool = False  # a resume may change the learning rate and max_steps
    force_gates: bool = False  # a phase past its eval limits does not stop the pipeline (recorded)


def run_config(loaded: LoadedConfig, *, phase: str | None = None, force: bool = False, fresh: bool = False,
               resume_with_changes: bool = False, log: RunLog | None = None, rerun_hint: str | None = None,
               extra_callbacks: list[Any] | None = None, plan: Plan | None = None,
               force_gates: bool = False) -> list[PhaseResult]:
    """Train every selected phase in order; returns the results of phases that ran or were skipped.

    Interrupted phases resume from their newest complete checkpoint unless ``fresh``; SIGINT and
    SIGTERM save a checkpoint and stop cleanly (TrainingStopped). A pipeline's output directory is
    locked for the run (one pipeline run at a time), each phase's run directory while it trains.
    Under torchrun every rank calls this; rank 0 alone writes (nova.train.machinery.distributed).
    ``plan``: the plan ``nova train`` already made of ``loaded`` (made here when not given).
    """
    plan = (plan or make_plan(loaded)).select(phase)
    _check_paths(plan)
    ranks = distributed.current()
    distributed.init(ranks, plan.distributed.timeout_s)
    stop = StopRequest()
    log = log or RunLog(Path(plan.phases[0].phase.logs_dir) / f"{_log_name(loaded)}.log")
    if not ranks.main:
        log = RunLog(None, quiet=True)
    options = RunOptions(force, fresh, resume_with_changes, force_gates)
    with ExitStack() as stack:
        if plan.is_pipeline:
            distributed.on_main(ranks, lambda: _claim_pipeline(stack, Path(plan.pipeline.output_dir)))
        rerun_hint = rerun_hint or f"nova train --config {loaded.path}"
        stack.enter_context(signal_handling(stop, log.say, log, rerun_hint))
        stack.enter_context(speaking(log))  # data, model and training steps that take a while say so through it
        return _run_phases(plan, options, log=log, stop=stop, ranks=ranks,
                           rerun_hint=rerun_hint,
                           extra_callbacks=extra_callbacks or [])


def _check_paths(plan: Plan) -> None:
    """Every directory the run writes can be one and can be written, before any work (nova.files)."""
    from nova.files import check_writable_dir

    if plan.is_pipeline:
        check_writable_dir(plan.pipeline.output_dir, "output_dir")
    for item in plan.phases:
        check_writable_dir(item.run_dir, "output_dir")
        check_writable_dir(item.phase.logs_dir, "logs_dir")


def _claim_pipeline(stack: ExitStack, output_dir: Path) -> None:
    """The pipeline directory locked for the run, and nova's own: someone's pipeline.json is never adopted
    (checked before the lock writes anything there, and again under it)."""
    check_pipeline_dir(output_dir)
    stack.enter_context(locked(output_dir, "pipeline directory"))
    check_pipeline_dir(output_dir)


def _run_phases(plan: Plan, options: RunOptions, *, log: RunLog, stop: StopRequest, ranks: distributed.Ranks,
                rerun_hint: str, extra_callbacks: list[Any]) -> list[PhaseResult]:
    state = PipelineState(plan.state_path if ranks.main else None,
                          [PhaseEntry(p.name, p.run, p.phase.start_from) for p in plan.phases])
    results = []
    for index, item in enumerate(plan.phases):
        run = PhaseRun(item, tuple(item.chain_refs()), log, resume=not (options.fresh or options.force), stop=stop,
                       rerun_hint=rerun_hint, extra_callbacks=tuple(extra_callbacks),
                       resume_with_changes=options.resume_with_changes, ranks=ranks, distributed=plan.distributed)
        if item.run.is_complete and not options.force:
            _check_finished(run)
            log.say(f"[{item.name}] already finished ({item.run.output}); skipping (use --force to retrain)")
            results.append(PhaseResult(item.name, item.run_dir, item.run.output, [], 0.0, skipped=True))
        else:
            results.append(_run_one(run, item, state, log))
        _gates(run, state, options, plan.phases[index + 1].name if index + 1 < len(plan.phases) else None)
    return results


def _gates(run: PhaseRun, state: PipelineState, options: RunOptions, next_phase: str | None) -> None:
    """The phase's eval tasks and their limits (nova.eval.gates); a failed gate stops the pipeline here."""
    if not run.phase.eval.tasks:
        return
    if run.ranks.distributed:
        run.log.say(f"[{run.phase.name}] eval gates are not checked in a multi-rank run; check them with "
                    f"nova eval {run.run_dir}")
        return
    from nova.eval.gates import check_gates

    parent = run.planned.chain[-1][0] if run.planned.chain else None  # the adapter phase it stacks on
    check_gates(run.planned, parent, force=options.force or options.force_gates,
                next_phase=next_phase, rerun_hint=run.rerun_hint, say=run.log.say,
                record=lambda gate: state.update(run.phase.name, gate=gate))


def _check_finished(run: PhaseRun) -> None:
    """A finished phase is skipped only when it was trained with the settings asked for now."""
    from nova.train.fingerprint import check_finished
    from nova.train.phase import finished_fingerprints

    check_finished(run, finished_fingerprints(run))


def _run_one(run: PhaseRun, item: PlannedPhase, state: PipelineState, log: RunLog) -> PhaseResult:
    began = False

    def on_start() -> None:
        nonlocal began
        began = True
        state.update(item.name, status="running", started=time.time(), ended=None, error=None)

    if run.ranks.main:  # what the phase is doing, for nova status (activity.json)
        log.activity = activity_writer(item.run)
    try:
        result = run_phase(run, on_start)
    except BaseException as exc:
        if began:  # a phase that failed its input checks wrote nothing and stays as it was
            stopped = isinstance(exc, TrainingStopped) and not isinstance(exc, NonFiniteLoss)
            state.update(item.name, status="stopped" if stopped else "failed", ended=time.time(),
                         error=f"{type(exc).__name__}: {exc}"[:500])
        raise
    finally:
        log.activity, log.doing = None, []
        if run.ranks.main:
            clear_activity(item.run)
    state.update(item.name, status="done", ended=time.time(), seconds=round(result.seconds, 1),
                 **_retention_fields(item))
    log.say(f"[{item.name}] finished in {human_seconds(result.seconds)}; {trained_kind(item.full).noun}: "
            f"{result.adapter_dir}")
    return result


def _retention_fields(item: PlannedPhase) -> dict[str, Any]:
    """The phase's own holdout loss and its forgetting table, for pipeline.json (from retention.json)."""
    from nova.runs.retention import own_loss, read_retention

    data = read_retention(item.run)
    if data is None:
        return {}
    return {"eval_loss": own_loss(item.run, item.name), "forgetting": data.get("forgetting") or {}}


def _log_name(loaded: LoadedConfig) -> str:
    return f"{loaded.path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
