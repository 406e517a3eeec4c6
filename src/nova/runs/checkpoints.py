"""Checkpoints of a stage: names, the seal, validation, listing and retention (files only, no torch).

A checkpoint is written into ``.tmp-checkpoint-N``, sealed with ``nova_checkpoint.json`` and
renamed to ``checkpoint-N`` only when complete (``nova.train.resilience`` writes them), so a
kill at any moment never leaves a checkpoint that resume would take. Resume takes the newest
sealed checkpoint whose files are all there and moves broken ones aside with a message.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nova.runs.layout import ADAPTER_WEIGHTS

SEAL = "nova_checkpoint.json"
TRAINER_STATE = "trainer_state.json"
REQUIRED_FILES = (ADAPTER_WEIGHTS, "optimizer.pt", "scheduler.pt", TRAINER_STATE)
TMP_PREFIX = ".tmp-checkpoint-"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step}"


def checkpoint_step(path: Path | None) -> int:
    """The step of ``checkpoint-N`` (-1 for anything else; 0 for no checkpoint)."""
    if path is None:
        return 0
    m = _NAME.match(Path(path).name)
    return int(m.group(1)) if m else -1


def checkpoint_problem(path: Path) -> str | None:
    """None for a complete, sealed checkpoint; otherwise what is wrong with it."""
    if not (path / SEAL).exists():
        return "not sealed (written partially, e.g. killed while saving)"
    missing = [f for f in REQUIRED_FILES if not (path / f).exists()]
    if missing:
        return f"missing {', '.join(missing)}"
    try:
        json.loads((path / TRAINER_STATE).read_text())
        weights = path / ADAPTER_WEIGHTS
        with weights.open("rb") as fh:
            header_len = int.from_bytes(fh.read(8), "little")
            if header_len + 8 > weights.stat().st_size:
                raise ValueError("safetensors header longer than the file")
            json.loads(fh.read(header_len))
    except (ValueError, OSError) as exc:
        return f"corrupted ({type(exc).__name__})"
    return None


def _candidates(stage_dir: Path) -> list[Path]:
    try:
        entries = list(stage_dir.iterdir())
    except OSError:
        return []
    return sorted((p for p in entries if p.is_dir() and _NAME.match(p.name)), key=checkpoint_step)


def latest_checkpoint(stage_dir: Path, say: Callable[[str], None] | None = None) -> Path | None:
    """The newest complete checkpoint under ``stage_dir``; broken newer ones are moved aside."""
    for path in reversed(_candidates(stage_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        aside = path.with_name(f"broken-{path.name}-{int(time.time())}")
        path.rename(aside)
        if say:
            say(f"skipping {path.name}: {problem}; moved to {aside.name}")
    return None


def list_checkpoints(stage_dir: Path) -> list[tuple[int, Path, dict[str, Any]]]:
    """Complete checkpoints (what a resume would take) with their trainer state, oldest first; moves nothing."""
    out = []
    for path in _candidates(stage_dir):
        if checkpoint_problem(path) is not None:
            continue
        try:
            state = json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(state, dict):
            out.append((checkpoint_step(path), path, state))
    return out


def rotate(stage_dir: Path, keep: int) -> None:
    """Keep the newest ``keep`` sealed checkpoints (never the newest one)."""
    sealed = [p for p in _candidates(stage_dir) if (p / SEAL).exists()]
    for old in sealed[:-max(keep, 1)]:
        shutil.rmtree(old, ignore_errors=True)
