"""The ``monitor:`` section: alerts, early stopping and plots while a phase trains."""

from __future__ import annotations

from pydantic import Field

from nova.config.base import MAX_STEPS, Section


class MonitorConfig(Section):
    """Thresholds for alerts (a console line plus a record in <run>/alerts.jsonl), early stopping, plots."""

    memory_fraction: float = Field(0.9, gt=0, le=1, description="Alert when GPU memory in use exceeds this "
                                   "fraction of the GPU's total.")
    temperature_c: float = Field(
        85.0, gt=0, le=200, description="Alert when the GPU temperature exceeds this (Celsius).")
    grad_norm_max: float = Field(10.0, gt=0, description="Alert when the gradient norm exceeds this.")
    grad_norm_min: float = Field(0.01, ge=0, description="Alert when the gradient norm falls below this "
                                 "(nothing is learning).")
    throughput_drop: float = Field(0.2, gt=0, lt=1, description="Alert when tokens/s falls this fraction "
                                   "below its running median.")
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
    plot_every: int = Field(
        50, gt=0, le=MAX_STEPS, description="Redraw <run>/plots/loss.png every N steps (and at the end).")
