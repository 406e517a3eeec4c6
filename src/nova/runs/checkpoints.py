"""Checkpoints of a stage: names, the seal, validation, listing and retention (files only, no torch).

A checkpoint is written into ``.tmp-checkpoint-N``, sealed with ``nova_checkpoint.json`` and
renamed to ``checkpoint-N`` only when complete (``nova.train.machinery.resilience`` writes them), so a
kill at any moment never leaves a checkpoint that resume would take. Resume takes the newest
sealed checkpoint whose files are all there and moves broken ones aside with a message.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nova.files import MiB, fsync_tree, remove_tree, rename, write_json_atomic
from nova.runs.layout import ADAPTER_WEIGHTS

SEAL = "nova_checkpoint.json"
TRAINER_STATE = "trainer_state.json"
REQUIRED_FILES = (ADAPTER_WEIGHTS, "optimizer.pt", "scheduler.pt", TRAINER_STATE)
# FSDP (accelerate) writes the optimizer state as optimizer.bin, beside its pytorch_model_fsdp.bin
SAME_AS = {"optimizer.pt": ("optimizer.bin",)}
FULL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")  # a full fine-tuning checkpoint's model
TMP_PREFIX = ".tmp-checkpoint-"
BROKEN_PREFIX = "broken-"
KEEP_BROKEN = 2  # checkpoints moved aside are kept for a look, but not without limit
HASHED_MAX = 64 * MiB  # files up to this size get a sha256 in the seal (adapters, states); larger: size only
_NAME = re.compile(r"^checkpoint-(\d+)$")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def seal(directory: Path, step: int, fingerprint: dict[str, Any] | None, world_size: int = 1) -> None:
    """Seal a fully written checkpoint: its files made durable, then a record of each file's size
    (and a hash of the small ones) and the stage's fingerprint, itself written durably last."""
    fsync_tree(directory)
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != SEAL):
        size = path.stat().st_size
        entry: dict[str, Any] = {"size": size}
        if size <= HASHED_MAX:
            entry["sha256"] = _sha256(path)
        files[str(path.relative_to(directory))] = entry
    write_json_atomic(directory / SEAL, {"step": step, "time": time.time(), "files": files,
                                         "fingerprint": fingerprint, "world_size": world_size})


def read_seal(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((path / SEAL).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _files_problem(path: Path, files: dict[str, Any], deep: bool) -> str | None:
    for name, entry in files.items():
        target = path / name
        if not isinstance(entry, dict) or not target.is_file():
            return f"missing {name}"
        if target.stat().st_size != entry.get("size"):
            return f"{name} has {target.stat().st_size} bytes, the seal says {entry.get('size')} (truncated?)"
        if deep and "sha256" in entry and _sha256(target) != entry["sha256"]:
            return f"{name} does not match its hash in the seal (damaged)"
    return None


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step}"


def checkpoint_step(path: Path | None) -> int:
    """The step of ``checkpoint-N`` (-1 for anything else; 0 for no checkpoint)."""
    if path is None:
        return 0
    m = _NAME.match(Path(path).name)
    return int(m.group(1)) if m else -1


def checkpoint_problem(path: Path, *, deep: bool = False) -> str | None:
    """None for a complete, sealed checkpoint; otherwise what is wrong with it.

    Sizes are checked against the seal always; ``deep`` also checks the hashes (what resume does
    for the checkpoint it takes; ``nova status`` lists checkpoints without reading them whole).
    """
    record = read_seal(path)
    if record is None:
        return "not sealed (written partially, e.g. killed while saving)"
    weights = _weights_file(path)
    missing = [f for f in REQUIRED_FILES if f != ADAPTER_WEIGHTS
               and not any((path / g).exists() for g in (f, *SAME_AS.get(f, ())))]
    if weights is None:
        missing.insert(0, ADAPTER_WEIGHTS)
    if missing:
        return f"missing {', '.join(missing)}"
    if isinstance(record.get("files"), dict):
        problem = _files_problem(path, record["files"], deep)
        if problem:
            return problem
    try:
        json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))
        assert weights is not None
        with weights.open("rb") as fh:
            header_len = int.from_bytes(fh.read(8), "little")
            if header_len + 8 > weights.stat().st_size:
                raise ValueError("safetensors header longer than the file")
            json.loads(fh.read(header_len))
    except (ValueError, OSError) as exc:
        return f"corrupted ({type(exc).__name__})"
    return None


def _weights_file(path: Path) -> Path | None:
    """The checkpoint's weights: the adapter, or (full fine-tuning) the model or its first shard."""
    if (path / ADAPTER_WEIGHTS).exists():
        return path / ADAPTER_WEIGHTS
    if (path / FULL_WEIGHTS[0]).exists():
        return path / FULL_WEIGHTS[0]
    try:
        shards = sorted(set(json.loads((path / FULL_WEIGHTS[1]).read_text(encoding="utf-8"))["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return path / shards[0] if shards and (path / shards[0]).exists() else None


def seal_fingerprint(path: Path) -> dict[str, Any] | None:
    """The fingerprint a checkpoint was sealed with (None: none recorded)."""
    record = read_seal(path)
    value = record.get("fingerprint") if record else None
    return value if isinstance(value, dict) else None


def _candidates(stage_dir: Path) -> list[Path]:
    try:
        entries = list(stage_dir.iterdir())
    except OSError:
        return []
    return sorted((p for p in entries if p.is_dir() and _NAME.match(p.name)), key=checkpoint_step)


def move_aside(path: Path, problem: str, say: Callable[[str], None] | None = None) -> Path:
    """Rename a checkpoint that cannot be used to ``broken-...`` (kept for a look) and say so."""
    aside = path.with_name(f"{BROKEN_PREFIX}{path.name}-{int(time.time() * 1000)}")
    rename(path, aside)
    if say:
        say(f"skipping {path.name}: {problem}; moved to {aside.name}")
    return aside


def latest_checkpoint(stage_dir: Path, say: Callable[[str], None] | None = None) -> Path | None:
    """The newest complete checkpoint under ``stage_dir`` (hashes checked); broken newer ones are moved aside."""
    for path in reversed(_candidates(stage_dir)):
        problem = checkpoint_problem(path, deep=True)
        if problem is None:
            return path
        move_aside(path, problem, say)
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
    """Keep the newest ``keep`` sealed checkpoints (never the newest one), the newest KEEP_BROKEN
    moved-aside ones, and no leftover temporary directory of an interrupted save."""
    sealed = [p for p in _candidates(stage_dir) if (p / SEAL).exists()]
    for old in sealed[:-max(keep, 1)]:
        remove_tree(old)
    clean_leftovers(stage_dir)


_REPLACED = re.compile(r"^\.checkpoint-\d+\.old-")  # moved aside by files.replace_path, then interrupted


def clean_leftovers(stage_dir: Path) -> None:
    """Remove temporary directories of saves that never finished (and checkpoints a save replaced
    but was stopped before deleting), and old broken checkpoints."""
    try:
        entries = list(stage_dir.iterdir())
    except OSError:
        return
    for path in entries:
        if (path.name.startswith(TMP_PREFIX) or _REPLACED.match(path.name)) and path.is_dir():
            remove_tree(path)
    broken = sorted((p for p in entries if p.name.startswith(BROKEN_PREFIX) and p.is_dir()),
                    key=lambda p: p.stat().st_mtime)
    for path in broken[:-KEEP_BROKEN]:
        remove_tree(path)
