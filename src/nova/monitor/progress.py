"""How far a stage is: its step, total steps, step rate and ETA, from the files a run writes."""

from __future__ import annotations

import math
from typing import Any

from nova.config.schema import StageConfig
from nova.runs.checkpoints import list_checkpoints
from nova.runs.jsonl import number, read_json
from nova.runs.layout import RunDir

ETA_WINDOW = 10  # training logs used for the step rate


def total_steps(run: RunDir, stage: str, config: StageConfig | None,
                resolved: dict[str, Any]) -> tuple[int | None, bool]:
    """The stage's max_steps and whether it is exact: from the newest checkpoint's trainer_state.json,
    else training.max_steps in config.yaml, else estimated from the data report and epochs."""
    done = list_checkpoints(run.checkpoints(stage))
    if done:
        steps = done[-1][2].get("max_steps")
        if isinstance(steps, int) and steps > 0:
            return steps, True
    if config is None:
        return None, False
    t = config.training
    if t.max_steps:
        return t.max_steps, True
    report = read_json(run.data_report(stage)) or {}
    records = report.get("train_records")
    fitted = ((resolved.get("auto_fit") or {}).get(stage)) or {}
    micro = fitted.get("micro_batch_size") or t.micro_batch_size
    accum = fitted.get("gradient_accumulation_steps") or t.gradient_accumulation_steps
    if not isinstance(records, int) or records <= 0:
        return None, False
    per_epoch = max(math.ceil(math.ceil(records / micro) / accum), 1)
    return math.ceil(per_epoch * t.num_epochs), False


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


def latest(records: list[dict[str, Any]], key: str) -> tuple[float | None, int | None]:
    """The newest value of ``key`` and its step."""
    for r in reversed(records):
        value = number(r.get(key))
        if value is not None:
            return value, r.get("step") if isinstance(r.get("step"), int) else None
    return None, None
