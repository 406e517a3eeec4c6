"""The disk check: room for the checkpoints a plan keeps, so a long run does not stop on a full disk."""

from __future__ import annotations

import shutil
from pathlib import Path

from nova.files import MiB
from nova.preflight.report import TIGHT, Check, gib


def checkpoint_bytes(lora_params: int, optimizer: str) -> int:
    """One checkpoint: the fp32 adapter, the optimizer state (two moments) and small trainer files."""
    states = 2 if optimizer in ("adamw_8bit", "paged_adamw_8bit") else 8
    return lora_params * (4 + states) + MiB


def check_disk(run_dirs: list[tuple[Path, int]]) -> Check:
    """Free disk vs planned checkpoints: save_total_limit checkpoints plus the final adapter, per phase."""
    need = sum(b for _, b in run_dirs)
    where = _existing_parent(run_dirs[0][0]) if run_dirs else Path(".")
    free = shutil.disk_usage(where).free
    msg = f"checkpoints need about {gib(need)}; {gib(free)} free on {where}"
    if need > free:
        return Check("disk", "fail", msg, "free disk space, lower training.save_total_limit, or set output_dir "
                     "on a larger disk")
    if need > free * TIGHT:
        return Check("disk", "warn", msg, "lower training.save_total_limit or free disk space")
    return Check("disk", "pass", msg)


def _existing_parent(path: Path) -> Path:
    """The nearest directory that exists: the run directory is usually not created yet."""
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
