"""The run directory format: one owner for every name and file ``nova train`` writes.

Train writes through it; monitor, status, merge, infer and export read through it; nothing
else spells a run path. Files only: importing this package never imports torch.
"""

from nova.runs.checkpoints import (
    SEAL,
    checkpoint_name,
    checkpoint_problem,
    checkpoint_step,
    latest_checkpoint,
    list_checkpoints,
    rotate,
)
from nova.runs.layout import RunDir, has_adapter, is_complete, stage_label, stage_names
from nova.runs.record import AdapterRef, RunRecord, read_run, resolved_config, write_run_config

__all__ = [
    "SEAL", "AdapterRef", "RunDir", "RunRecord", "checkpoint_name", "checkpoint_problem", "checkpoint_step",
    "has_adapter", "is_complete", "latest_checkpoint", "list_checkpoints", "read_run", "resolved_config", "rotate",
    "stage_label", "stage_names", "write_run_config",
]
