"""Auto-fit: pick micro batch, accumulation and checkpointing so a step fits a memory budget.

The effective batch size (micro batch x accumulation) is what the optimizer sees, so it is
kept exactly: the micro batch is only moved among divisors of it. The user's own settings
win when they fit; otherwise the largest micro batch that fits with the user's checkpointing
choice, and only then checkpointing is turned on (it costs about 30% speed, a smaller micro
batch usually costs less).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nova.files import GiB
from nova.preflight.estimate import (
    CALIBRATED,
    Constants,
    Estimate,
    ModelShape,
    Settings,
    estimate_for_shape,
    with_batch,
)

DEFAULT_MARGIN = 0.10  # at least 10% of headroom; the estimate's own band for its regime when wider


@dataclass(frozen=True)
class FitChoice:
    """What auto-fit chose, whether it fits, and why."""

    micro_batch_size: int
    gradient_accumulation_steps: int
    gradient_checkpointing: bool
    estimate_bytes: int
    budget_bytes: int
    fits: bool
    changed: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"micro_batch_size": self.micro_batch_size,
                "gradient_accumulation_steps": self.gradient_accumulation_steps,
                "gradient_checkpointing": self.gradient_checkpointing, "estimate_bytes": self.estimate_bytes,
                "budget_bytes": self.budget_bytes, "fits": self.fits, "changed": self.changed,
                "reason": self.reason}


def _divisors_desc(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]


def fit_batch(shape: ModelShape, settings: Settings, accumulation: int, budget_bytes: int, *,
              margin: float = DEFAULT_MARGIN, constants: Constants | None = None, min_micro: int = 1,
              calibrate: Callable[[Estimate], Estimate] | None = None) -> FitChoice:
    """Choose (micro batch, accumulation, checkpointing) for ``budget_bytes`` with a safety margin.

    ``settings`` carries the configured micro batch and checkpointing; ``accumulation`` the
    configured gradient_accumulation_steps. The effective batch size never changes. A candidate
    fits when its estimate plus the wider of ``margin`` and the estimate's stated uncertainty
    (nova.preflight.uncertainty: wider for long rows) is within the budget. The micro batch stays at
    or above ``min_micro`` (KTO's KL term pairs two replies of one micro batch). ``calibrate`` corrects each
    candidate's estimate by what a probe measured on this machine (nova.preflight.probe_calibration).
    """
    c = constants or CALIBRATED
    effective = settings.micro_batch_size * accumulation

    def est(mb: int, gc: bool) -> Estimate:
        e = estimate_for_shape(shape, with_batch(settings, mb, gc), c)
        return calibrate(e) if calibrate is not None else e

    def needs(e: Estimate) -> int:
        return e.upper_with(margin)

    configured = est(settings.micro_batch_size, settings.gradient_checkpointing)
    if needs(configured) <= budget_bytes:
        return _choice(settings.micro_batch_size, effective, settings.gradient_checkpointing, configured,
                       budget_bytes, True, False, f"fits as configured ({_gib(configured.total_bytes)}, "
                       f"{_gib(needs(configured))} with its margin, of {_gib(budget_bytes)})")
    orders = [settings.gradient_checkpointing] + ([True] if not settings.gradient_checkpointing else [])
    for gc in orders:
        for mb in _divisors_desc(effective):
            if mb > settings.micro_batch_size or mb < min_micro:
                continue
            e = est(mb, gc)
            if needs(e) <= budget_bytes:
                what = [f"micro_batch_size {settings.micro_batch_size} -> {mb}",
                        f"gradient_accumulation_steps {accumulation} -> {effective // mb}"]
                if gc != settings.gradient_checkpointing:
                    what.append("gradient checkpointing on")
                return _choice(mb, effective, gc, e, budget_bytes, True, True,
                               f"{', '.join(what)} (same effective batch {effective}): needs about "
                               f"{_gib(e.total_bytes)}, {_gib(needs(e))} with its margin, of {_gib(budget_bytes)}")
    low = min(min_micro, settings.micro_batch_size)
    smallest = est(low, True)
    return _choice(low, effective, True, smallest, budget_bytes, False, True,
                   f"does not fit even at micro_batch_size {low} with gradient checkpointing: needs about "
                   f"{_gib(smallest.total_bytes)}, {_gib(needs(smallest))} with its margin, of "
                   f"{_gib(budget_bytes)}; shorten data.max_length, lower lora.r or use a GPU with more memory")


def _choice(mb: int, effective: int, gc: bool, e: Estimate, budget: int, fits: bool, changed: bool,
            reason: str) -> FitChoice:
    return FitChoice(mb, effective // mb, gc, e.total_bytes, budget, fits, changed, reason)


def _gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"
