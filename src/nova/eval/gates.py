"""Gates: after a phase, score its ``eval:`` tasks and stop the pipeline when one is past its limits.

Each task of the phase's ``eval.tasks`` is scored (``nova.eval.run``, reusing what eval.json holds
for the same weights and items) on the phase, on what it started from and on the base. A task
fails when it is worse than ``against`` (the phase before, or the base) by more than ``max_drop``,
or worse than ``min``. A failure stops the pipeline before the next phase with one line naming
the task, the figures and the ways forward, unless the run was asked to go on (``--force-gates``,
or ``--force``): then it is recorded as forced in pipeline.json and eval.json. A finished phase
that is skipped on a re-run is checked again, so a failed gate keeps stopping the pipeline until
something changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nova.config.eval_schema import EvalTaskConfig
from nova.errors import NovaError
from nova.runs.eval_results import BASE, better, write_eval


class GateFailed(NovaError):
    """A phase's task scores are past the limits of its eval section."""


def _check(task: EvalTaskConfig, column: str, spec: dict[str, Any], scores: dict[str, dict[str, Any]],
           phase: str, reference: str) -> dict[str, Any]:
    """One gate on one column: the figures and whether they pass."""
    after = scores.get(phase, {}).get(column)
    before = scores.get(reference, {}).get(column)
    metric = spec.get("metric", "score")
    gate: dict[str, Any] = {"phase": phase, "task": column, "metric": metric, "after": after, "against": reference,
                            "before": before, "max_drop": task.max_drop, "min": task.min, "passed": True}
    if after is None:
        gate.update(passed=False, message=f"{column} could not be scored on {phase}")
        return gate
    problems = []
    if task.max_drop is not None and before is not None and -better(spec, after, before) > task.max_drop + 1e-9:
        problems.append(f"{column} {metric} {before:.4f} ({reference}) -> {after:.4f} ({phase}): "
                        f"{'down' if spec.get('higher_is_better', True) else 'up'} {abs(after - before):.4f}, "
                        f"more than max_drop {task.max_drop}")
    if task.min is not None and better(spec, after, task.min) < 0:
        limit = "below min" if spec.get("higher_is_better", True) else "above the limit (min)"
        problems.append(f"{column} {metric} {after:.4f} on {phase}, {limit} {task.min}")
    gate["passed"] = not problems
    gate["message"] = "; ".join(problems) if problems else (
        f"{column} {metric} {after:.4f}" + (f" (against {reference}: {before:.4f})" if before is not None else ""))
    return gate


def check_gates(planned: Any, parent: str | None, *, force: bool, next_phase: str | None, rerun_hint: str,
                say: Callable[[str], None], record: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    """Score the phase's eval tasks and check their limits; GateFailed unless ``force``.

    ``parent`` is the phase it starts from (None: the base); ``record`` stores the outcome in
    pipeline.json. Returns the gates checked."""
    from nova.eval.run import EvalRequest, evaluate

    cfg = planned.phase.eval
    name = planned.name
    models = [BASE, *([parent] if parent else []), name]
    results = evaluate(EvalRequest(planned.run.path, [t.task for t in cfg.tasks], models, cfg.limit),
                       say=lambda line: say(f"[{name}] {line}"))
    scores = {m["name"]: m["scores"] for m in results["models"]}
    gates = []
    for task in cfg.tasks:
        for column in results["columns"].get(task.task, []):
            reference = BASE if task.against == "base" or parent is None else parent
            gates.append(_check(task, column, results["tasks"][column], scores, name, reference))
    failed = [g for g in gates if not g["passed"]]
    for gate in gates:
        gate["forced"] = bool(not gate["passed"] and force)
        say(f"[{name}] gate {gate['task']}: {'passed' if gate['passed'] else 'FAILED'}: {gate['message']}")
    write_eval(planned.run, {"tasks": {}, "models": [], "gates": gates})
    record({"passed": not failed, "forced": bool(failed and force), "failed": [g["message"] for g in failed]})
    if failed and not force:
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        where = f"the pipeline stopped before phase '{next_phase}'" if next_phase else "its adapter is kept"
        raise GateFailed(f"phase '{name}' failed its eval gate: {failed[0]['message']}{more}; {where}",
                         hint=f"see every score with 'nova eval {planned.run.path}'; change the phase and retrain "
                         f"it ({rerun_hint} --phase {name} --force), relax eval.tasks in its config, or go on "
                         "anyway with --force-gates (recorded in pipeline.json)")
    if failed:
        say(f"[{name}] gate failed but --force-gates/--force given: continuing (recorded in pipeline.json)")
    return gates
