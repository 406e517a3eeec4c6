"""nova's data pipeline: read, check, split and tokenize one stage's training data.

The trainer calls ``prepare_stage_data``; ``nova preflight``, ``nova train --dry-run`` and
``nova data check`` call ``check_data``. Importing this package is cheap: the names below load on
first use (``nova.data.formats``, which the config schema reads, imports without the pipeline), and
datasets, transformers and pyarrow are imported only by the functions that use them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DataReport", "PreparedData", "check_data", "data_key", "prepare_stage_data"]


def __getattr__(name: str) -> Any:
    if name in ("PreparedData", "check_data", "data_key", "prepare_stage_data"):
        from nova.data import pipeline

        return getattr(pipeline, name)
    if name == "DataReport":
        from nova.data import report

        return report.DataReport
    raise AttributeError(f"module 'nova.data' has no attribute {name!r}")
