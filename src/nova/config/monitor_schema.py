"""The ``monitor:`` section: alerts, early stopping and plots while a phase trains."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from nova.config.base import MAX_STEPS, Section
from nova.config.data_schema import DatasetSpec


class MonitorConfig(Section):
    """Thresholds for alerts (a console line plus a record in <run>/alerts.jsonl), early stopping, plots."""

    memory_fraction: float = Field(0.9, gt=0, le=1, description="Alert when GPU memory in use exceeds this "
                                   "fraction of the GPU's total.")
    temperature_c: float = Field(
        85.0, gt=0, le=200, description="Alert when the GPU temperature exceeds this (Celsius).")
    grad_norm_max: float | Literal["auto"] = Field(
        "auto", description="Alert when the gradient norm exceeds this. 'auto': grad_norm_spike times the median "
        "of the stage's first grad_norm_baseline_steps logged norms (a fixed number suits no method: DPO's norms "
        "start far above SFT-LoRA's); a non-finite norm always alerts.")
    grad_norm_spike: float = Field(10.0, gt=1, le=1_000_000, description="With grad_norm_max auto: how many "
                                   "times the baseline median counts as a spike.")
    grad_norm_baseline_steps: int = Field(5, gt=0, le=MAX_STEPS, description="With grad_norm_max auto: logged "
                                          "steps that set the baseline (no spike alert before it is known).")
    grad_norm_min: float = Field(0.01, ge=0, description="Alert when the gradient norm falls below this "
                                 "(nothing is learning).")
    throughput_drop: float = Field(0.2, gt=0, lt=1, description="Alert when tokens/s falls this fraction "
                                   "below its running median for throughput_persist logged steps in a row.")
    throughput_persist: int = Field(
        3, gt=0, le=MAX_STEPS, description="Logged steps in a row tokens/s must stay low before the throughput "
        "alert fires: a moment of other work on a shared CPU or GPU is not a slowdown, a throttled or contended "
        "device is.")
    throughput_min_logs: int = Field(
        10, gt=0, le=MAX_STEPS, description="Logged training steps of a stage before its tokens/s is judged at "
        "all: the running median needs them, and a short run has no speed to lose.")
    loss_rising_evals: int = Field(
        3, gt=0, le=MAX_STEPS, description="Alert when the eval loss rises this many evals in a row.")
    alert_repeat_steps: int = Field(
        200, gt=0, le=MAX_STEPS, description="An alert fires when its condition starts to hold; while it keeps "
        "holding it repeats at most once per this many steps (a condition that clears and returns fires again at "
        "once).")
    early_stopping_patience: int | None = Field(
        None, gt=0, le=MAX_STEPS, description="Stop a stage when the eval loss has not improved for this many evals.")
    early_stopping_min_delta: float = Field(
        0.0, ge=0, description="An eval loss counts as improved only when it beats the best by more than this.")
    retention_sets: list[DatasetSpec] = Field(
        default_factory=list, description="General holdout sets scored at each phase's start and end (the "
        "forgetting table, as retention:<path>), beside the holdouts of the chain's earlier phases, which are "
        "always scored. Read like data.datasets, with the phase's tokenizer and chat template.")
    forgetting_alert: float = Field(
        0.1, gt=0, le=100, description="Alert when an earlier phase's (or retention set's) holdout loss rises more "
        "than this fraction after a phase (0.1: 10% worse).")
    plot_every: int = Field(
        50, gt=0, le=MAX_STEPS, description="Redraw <run>/plots/loss.png every N steps (and at the end).")
