"""nova's data pipeline: read, check, split and tokenize one stage's training data.

The trainer calls ``prepare_stage_data``; ``nova preflight``, ``nova train --dry-run`` and
``nova data check`` call ``check_data``. Importing this package is cheap: datasets,
transformers and pyarrow are imported only by the functions that use them.
"""

from nova.data.pipeline import PreparedData, check_data, data_key, prepare_stage_data
from nova.data.report import DataReport

__all__ = ["DataReport", "PreparedData", "check_data", "data_key", "prepare_stage_data"]
