"""The disk check: room for the checkpoints a plan keeps, so a long run does not stop on a full disk."""

from __future__ import annotations

import shutil
from pathlib import Path

from nova.files import MiB
from nova.preflight.report import TIGHT, Check, gib
from nova.runs.layout import DEEPEST_FILE
from nova.system import LONG_PATHS_FIX


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


def check_path_lengths(run_dirs: list[Path], limit: int) -> Check:
    """Windows without long paths: the deepest file a run writes must stay under ``limit`` characters,
    or the save of a checkpoint fails hours into the run with a bare "file not found"."""
    deepest = max((p.resolve() for p in run_dirs), key=lambda p: len(str(p)))
    longest = len(str(deepest)) + 1 + len(DEEPEST_FILE)
    if longest <= limit:
        return Check("paths", "pass", f"the deepest file a run writes is about {longest} characters long "
                     f"(Windows' limit is {limit + 1}; long paths are off)")
    return Check("paths", "fail", f"{deepest} is {len(str(deepest))} characters long: a run's checkpoint files "
                 f"would reach about {longest}, past Windows' {limit + 1}-character limit (long paths are off)",
                 f"{LONG_PATHS_FIX}; or set output_dir to a shorter path")
