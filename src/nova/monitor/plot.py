"""plots/loss.png from metrics.jsonl: loss and learning rate, DPO reward margins and accuracy, GRPO's
reward, and the forgetting table (retention.json: each earlier phase's holdout loss before and after this phase).

Stages of a phase are drawn one after another on one step axis (the second stage starts where
the first ended, marked by a dotted line and its name), so an SFT->DPO phase reads left to right.
Drawn with matplotlib's Agg canvas directly (no pyplot, no global backend switch, no display),
written to a temporary file and renamed, so a reader never sees half a PNG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nova.errors import NovaError
from nova.files import rename, temp_sibling
from nova.runs.jsonl import number, read_jsonl
from nova.runs.layout import RunDir

Points = list[tuple[float, float]]
DPO_KEYS = ("rewards/margins", "rewards/accuracies")


@dataclass
class Curves:
    """Everything drawn, with x already offset so stages follow each other."""

    train_loss: Points = field(default_factory=list)
    eval_loss: Points = field(default_factory=list)
    learning_rate: Points = field(default_factory=list)
    margins: Points = field(default_factory=list)
    accuracies: Points = field(default_factory=list)
    eval_margins: Points = field(default_factory=list)
    eval_accuracies: Points = field(default_factory=list)
    reward: Points = field(default_factory=list)  # GRPO: the mean total reward of each step's completions
    eval_reward: Points = field(default_factory=list)
    stage_starts: list[tuple[float, str]] = field(default_factory=list)
    forgetting: list[tuple[str, float, float]] = field(default_factory=list)  # (set, loss before, loss after)

    @property
    def has_dpo(self) -> bool:
        return bool(self.margins or self.accuracies or self.eval_margins or self.eval_accuracies)

    @property
    def has_grpo(self) -> bool:
        return bool(self.reward or self.eval_reward)


def _last_per_step(records: list[dict[str, Any]], key: str) -> dict[int, dict[str, Any]]:
    """Records carrying ``key``, one per step; after a resume the later record of a step wins."""
    out: dict[int, dict[str, Any]] = {}
    for r in records:
        step = r.get("step")
        if key in r and isinstance(step, int):
            out[step] = r
    return dict(sorted(out.items()))


def build_curves(records: list[dict[str, Any]]) -> Curves:
    """Turn metrics.jsonl records into offset curves (pure: tested without matplotlib)."""
    stages: list[str] = []
    for r in records:
        name = str(r.get("stage", ""))
        if name not in stages:
            stages.append(name)
    curves = Curves()
    offset = 0.0
    for name in stages:
        mine = [r for r in records if str(r.get("stage", "")) == name]
        curves.stage_starts.append((offset, name))
        train = _last_per_step(mine, "loss")
        evals = _last_per_step(mine, "eval_loss")
        rewards = _last_per_step(mine, "eval_reward")
        for series, source, key in ((curves.train_loss, train, "loss"), (curves.learning_rate, train, "learning_rate"),
                                    (curves.margins, train, DPO_KEYS[0]), (curves.accuracies, train, DPO_KEYS[1]),
                                    (curves.eval_loss, evals, "eval_loss"),
                                    (curves.eval_margins, evals, "eval_" + DPO_KEYS[0]),
                                    (curves.eval_accuracies, evals, "eval_" + DPO_KEYS[1]),
                                    (curves.reward, train, "reward"), (curves.eval_reward, rewards, "eval_reward")):
            points = [(offset + step, v if math.isfinite(v) else math.nan)
                      for step, r in source.items() if (v := number(r.get(key))) is not None]
            if series and points:
                series.append((offset, math.nan))  # a gap: no line joins the end of one stage to the next
            series.extend(points)
        steps = [r["step"] for r in mine if isinstance(r.get("step"), int)]
        offset += max(steps, default=0)
    return curves


def plot_run(run_dir: Path) -> Path:
    """Redraw ``<run_dir>/plots/loss.png`` from ``<run_dir>/metrics.jsonl`` and return its path."""
    run = RunDir(run_dir)
    metrics = run.metrics
    if not metrics.is_file():
        raise NovaError(f"{run.path} has no {metrics.name}",
                        hint="give a run directory that has started training (it writes metrics.jsonl)")
    records = read_jsonl(metrics)
    if not records:
        raise NovaError(f"{metrics} has no metrics yet", hint="wait for the first logged step")
    curves = build_curves(records)
    curves.forgetting = forgetting_bars(run)
    dest = run.plot
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{temp_sibling(dest)}.png")  # the suffix tells matplotlib the format
    try:
        _draw(curves, run.path.name, tmp)
        rename(tmp, dest)  # waits out a viewer that has the old plot open (Windows)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def forgetting_bars(run: RunDir) -> list[tuple[str, float, float]]:
    """(holdout set, loss before, loss after) from the run's retention.json; empty without one."""
    from nova.runs.retention import read_retention

    table = (read_retention(run) or {}).get("forgetting") or {}
    out = []
    for name, row in table.items():
        before, after = number(row.get("eval_loss_before")), number(row.get("eval_loss_after"))
        if before is not None and after is not None:
            out.append((str(name), before, after))
    return out


def _xy(points: Points) -> tuple[list[float], list[float]]:
    return [p[0] for p in points], [p[1] for p in points]


def _draw(curves: Curves, title: str, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = 1 + curves.has_dpo + curves.has_grpo + (1 if curves.forgetting else 0)
    fig = Figure(figsize=(10, 3.8 * panels + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    every = fig.subplots(panels, 1, squeeze=False)[:, 0]
    if curves.forgetting:
        _draw_forgetting(every[-1], curves.forgetting)
        every = every[:-1]
    axes = every
    for panel in axes[1:]:
        panel.sharex(axes[0])
    ax = axes[0]
    handles = []
    if curves.train_loss:
        handles += ax.plot(*_xy(curves.train_loss), color="C0", lw=1.2, label="train loss")
    if curves.eval_loss:
        handles += ax.plot(*_xy(curves.eval_loss), "o-", color="C1", lw=1.2, ms=4, label="eval loss")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if curves.learning_rate:
        lr_ax = ax.twinx()
        handles += lr_ax.plot(*_xy(curves.learning_rate), "--", color="0.5", lw=1, label="learning rate")
        lr_ax.set_ylabel("learning rate")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize=8)
    ax.set_title(f"{title}: loss" + (" (stages in sequence)" if len(curves.stage_starts) > 1 else ""))
    if curves.has_dpo:
        _draw_dpo(axes[1], curves)
    if curves.has_grpo:
        _draw_grpo(axes[1 + curves.has_dpo], curves)
    for panel in axes:
        for x, name in curves.stage_starts:
            if len(curves.stage_starts) > 1:
                panel.axvline(x, color="0.6", ls=":", lw=1)
                panel.text(x, 0.98, f" {name}", transform=panel.get_xaxis_transform(), va="top", fontsize=8,
                           color="0.35")
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, format="png")


def _draw_forgetting(ax: Any, bars: list[tuple[str, float, float]]) -> None:
    xs = list(range(len(bars)))
    ax.bar([x - 0.2 for x in xs], [b[1] for b in bars], width=0.4, color="0.6", label="before this phase")
    ax.bar([x + 0.2 for x in xs], [b[2] for b in bars], width=0.4, color="C1", label="after this phase")
    for x, (_, before, after) in zip(xs, bars, strict=True):
        change = (after - before) / before if before > 0 else 0.0
        ax.text(x + 0.2, after, f"{change:+.1%}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(xs, [b[0] for b in bars], fontsize=8)
    ax.set_ylabel("holdout loss")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("forgetting: earlier holdouts on this phase's model")


def _draw_dpo(ax: Any, curves: Curves) -> None:
    handles = []
    if curves.margins:
        handles += ax.plot(*_xy(curves.margins), color="C2", lw=1.2, label="reward margin")
    if curves.eval_margins:
        handles += ax.plot(*_xy(curves.eval_margins), "o-", color="C2", ms=4, alpha=0.6, label="eval reward margin")
    ax.set_ylabel("reward margin")
    ax.grid(alpha=0.3)
    acc_ax = ax.twinx()
    if curves.accuracies:
        handles += acc_ax.plot(*_xy(curves.accuracies), color="C3", lw=1, label="reward accuracy")
    if curves.eval_accuracies:
        handles += acc_ax.plot(*_xy(curves.eval_accuracies), "o-", color="C3", ms=4, alpha=0.6,
                               label="eval reward accuracy")
    acc_ax.set_ylim(0, 1.05)
    acc_ax.set_ylabel("reward accuracy")
    if handles:
        ax.legend(handles=handles, loc="lower right", fontsize=8)
    ax.set_title("preference rewards (DPO, KTO, ORPO, SimPO)")


def _draw_grpo(ax: Any, curves: Curves) -> None:
    handles = []
    if curves.reward:
        handles += ax.plot(*_xy(curves.reward), color="C4", lw=1.2, label="reward (mean of the step's completions)")
    if curves.eval_reward:
        handles += ax.plot(*_xy(curves.eval_reward), "o-", color="C5", lw=1.2, ms=4, label="eval reward")
    ax.set_ylabel("reward")
    ax.grid(alpha=0.3)
    if handles:
        ax.legend(handles=handles, loc="lower right", fontsize=8)
    ax.set_title("GRPO reward (its loss sits near 0 whatever it learns)")
