"""The fit of the estimator's free constant against published measurements, and the errors.

Only ``role="fit"`` rows (``nova.preflight.calibration_rows``: PEFT + bitsandbytes on HF model
code with a known loss path) move the constant; every other row is held out and only checked.
The one fitted constant is physical: the caching allocator's pool as a fraction of the step's
transient bytes (reserved minus allocated). The CUDA context is not fitted (no fit row holds it).

``nova.preflight.estimate.CALIBRATED`` holds the result of ``fit_constants`` on these rows
(there, so the estimate never imports this module); a test re-runs the fit and compares.
"""

from __future__ import annotations

import math
from typing import Any

from nova.files import GiB
from nova.preflight.calibration_rows import ROWS, Row
from nova.preflight.estimate import CALIBRATED, Constants, estimate_for_shape, model_shape

__all__ = ["ROWS", "Row", "fit_constants", "predict", "row_errors"]


def predict(row: Row, configs: dict[str, dict[str, Any]], constants: Constants = CALIBRATED) -> float:
    """The estimate in the row's own metric."""
    est = estimate_for_shape(model_shape(configs[row.model]), row.settings, constants)
    if row.metric == "allocated":
        return float(est.allocated_bytes)
    if row.metric == "reserved":
        return float(est.reserved_bytes)
    return float(est.total_bytes)


def row_errors(configs: dict[str, dict[str, Any]], constants: Constants = CALIBRATED) -> list[dict[str, Any]]:
    """Estimate vs measured for every row: relative error = estimate / measured - 1."""
    out = []
    for row in ROWS:
        est = predict(row, configs, constants)
        out.append({"id": row.id, "role": row.role, "metric": row.metric, "model": row.model, "added": row.added,
                    "measured_gib": row.measured_bytes / GiB, "estimate_gib": est / GiB,
                    "error": est / row.measured_bytes - 1, "source": row.source})
    return out



def fit_constants(configs: dict[str, dict[str, Any]]) -> Constants:
    """Least squares in log space over the fit rows, on a grid of pool fractions (0 to 0.6)."""
    fit_rows = [r for r in ROWS if r.role == "fit"]
    best: tuple[float, Constants] | None = None
    for step in range(0, 121):
        trial = Constants(pool_fraction=step * 0.005)
        loss = sum(math.log(predict(r, configs, trial) / r.measured_bytes) ** 2 for r in fit_rows)
        if best is None or loss < best[0]:
            best = (loss, trial)
    assert best is not None
    return best[1]
