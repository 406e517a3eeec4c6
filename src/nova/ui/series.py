"""Chart data from metrics.jsonl records: one shared step axis per chart, the shape uPlot draws.

The stages of a phase follow each other on one step axis, as in ``plots/loss.png`` (the
second stage starts where the first ended), so an SFT -> DPO phase reads left to right. A
record's key is a point of that series at the record's step; a step without one, or with a NaN,
is a null, never a made-up value (the page joins the sparse eval points, not a train loss gap).
After a resume the later record of a step wins, as in the plot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from nova.runs.jsonl import number

GiB = float(1 << 30)


@dataclass(frozen=True)
class Chart:
    """A chart: its title, the series keys it shows (first match wins the label), and a scale for values."""

    name: str
    title: str
    keys: tuple[str, ...]
    scale: float = 1.0
    prefixes: tuple[str, ...] = ()  # every key that starts with one of these (reward curves by name)


CHARTS = (
    Chart("loss", "loss (train, eval)", ("loss", "eval_loss")),
    Chart("lr", "learning rate", ("learning_rate",)),
    Chart("grad_norm", "gradient norm", ("grad_norm",)),
    Chart("tokens", "tokens/s (training steps only)", ("tokens_per_second",)),
    Chart("memory", "memory (GiB)", ("memory_reserved", "memory_allocated", "memory_rss", "gpu_memory_used"),
          scale=1 / GiB),
    Chart("rewards", "rewards (preference and RL methods)", ("reward", "eval_reward", "kl"),
          prefixes=("rewards/", "eval_rewards/")),
)


def stage_offsets(records: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """(stage, the step its records are shifted by), in the order the stages first appear."""
    order: list[str] = []
    last: dict[str, int] = {}
    for r in records:
        stage = str(r.get("stage", ""))
        if stage not in order:
            order.append(stage)
        step = r.get("step")
        if isinstance(step, int) and not isinstance(step, bool):
            last[stage] = max(last.get(stage, 0), step)
    out, offset = [], 0
    for stage in order:
        out.append((stage, offset))
        offset += last.get(stage, 0)
    return out


def _keys(chart: Chart, records: list[dict[str, Any]]) -> list[str]:
    present = {k for r in records for k in r if number(r.get(k)) is not None}
    keys = [k for k in chart.keys if k in present]
    keys += sorted(k for k in present if k not in keys and chart.prefixes and k.startswith(chart.prefixes))
    return keys


def _value(record: dict[str, Any], key: str, scale: float) -> float | None:
    v = number(record.get(key))
    if v is None or not math.isfinite(v):
        return None  # a NaN or inf loss is a gap in the line (the alert says what happened)
    return v * scale


def chart_data(records: list[dict[str, Any]], chart: Chart) -> dict[str, Any] | None:
    """``{name, title, keys, x, y: [[...] per key], stages: [[x, name]]}``; None when nothing to draw."""
    keys = _keys(chart, records)
    if not keys:
        return None
    offsets = dict(stage_offsets(records))
    points: dict[int, dict[str, float | None]] = {}
    for r in records:
        step = r.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            continue
        x = offsets.get(str(r.get("stage", "")), 0) + step
        for key in keys:
            if key in r:  # a non-finite value still marks its step, as a gap
                points.setdefault(x, {})[key] = _value(r, key, chart.scale)
    xs = sorted(points)
    if not xs:
        return None
    return {"name": chart.name, "title": chart.title, "keys": keys, "x": xs,
            "y": [[points[x].get(k) for x in xs] for k in keys],
            "stages": [[offset, stage] for stage, offset in stage_offsets(records)]}


def charts(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every chart the records have data for, in a fixed order."""
    return [data for chart in CHARTS if (data := chart_data(records, chart)) is not None]
