"""Probe-calibrated estimates: what ``nova train --probe`` measured, kept per machine, model and code path.

A probe stores the ratio of its measured peak to the estimate of the same micro batch
(nova.train.probe). Preflight then scales its estimate of a later config of the same model
(the same architecture, by its shape) on the same machine and device, on the same code path
(quantization, precision, method, attention and padding, checkpointing), by that ratio, and says
so: "calibrated by a probe on this machine, N days ago". The batch and length may differ: the
ratio carries the terms the estimate misses on this machine (kernels, allocator rounding) over.

The file lives in the user's cache directory (``NOVA_CACHE_DIR``, else ``$XDG_CACHE_HOME/nova`` or
``~/.cache/nova``; ``%LOCALAPPDATA%\\nova`` on Windows), one JSON object; a damaged file is ignored
and replaced by the next probe, since it only ever refines an estimate.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from nova.files import write_json_atomic
from nova.preflight.estimate import Estimate, ModelShape, Settings

FILE = "probe_calibration.json"
MAX_AGE_DAYS = 90  # a machine's drivers and libraries change: an older probe is not trusted any more


def cache_dir() -> Path:
    """nova's directory in the user's cache (nova.system.user_cache_dir)."""
    from nova.system import user_cache_dir

    return user_cache_dir()


def machine(device: str, gpu_name: str | None = None) -> str:
    """This machine and the device that trains: the host, then the GPU's name or the CPU's model."""
    if device == "cuda" and gpu_name:
        return f"{socket.gethostname()}|cuda|{gpu_name}"
    from nova.system import cpu_description

    return f"{socket.gethostname()}|cpu|{cpu_description()[0]}"


def model_key(shape: ModelShape) -> str:
    """The model by its architecture (every shape fact the estimate reads), not by its path."""
    text = json.dumps(asdict(shape), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def path_key(s: Settings) -> str:
    """The code path: what changes which tensors a step holds, not how many rows or tokens it runs."""
    return "|".join(str(x) for x in (
        s.method, s.quantization, s.double_quant, s.compute_bytes, s.full, s.attn_implementation,
        s.attention_masked, s.attention_row is not None, s.gradient_checkpointing, s.loss_impl, s.optimizer,
        s.device))


@dataclass(frozen=True)
class Calibration:
    """One stored probe: measured / estimated, and when."""

    ratio: float
    measured_bytes: int
    estimated_bytes: int
    time: float

    @property
    def days(self) -> int:
        return int((time.time() - self.time) // 86400)


def _read() -> dict[str, Any]:
    try:
        data = json.loads((cache_dir() / FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _key(settings: Settings, shape: ModelShape, where: str) -> str:
    return f"{where}#{model_key(shape)}#{path_key(settings)}"


def store(settings: Settings, shape: ModelShape | None, estimated: int, measured: int, device: str,
          gpu_name: str | None = None) -> None:
    """Keep a probe's measurement for later preflights of this model on this machine."""
    if shape is None or estimated <= 0 or measured <= 0:
        return
    data = _read()
    data[_key(settings, shape, machine(device, gpu_name))] = {
        "ratio": measured / estimated, "measured_bytes": measured, "estimated_bytes": estimated,
        "time": time.time(), "seq_len": settings.seq_len, "micro_batch_size": settings.micro_batch_size}
    try:
        write_json_atomic(cache_dir() / FILE, data)
    except OSError:  # a read-only cache only loses the refinement
        return


def lookup(settings: Settings, shape: ModelShape, gpu_name: str | None = None) -> Calibration | None:
    """The stored probe for this model, path and machine, if one is recent enough (never for a hypothetical GPU)."""
    if settings.device == "cuda" and not gpu_name:
        return None
    entry = _read().get(_key(settings, shape, machine(settings.device, gpu_name)))
    if not isinstance(entry, dict):
        return None
    try:
        found = Calibration(float(entry["ratio"]), int(entry["measured_bytes"]), int(entry["estimated_bytes"]),
                            float(entry["time"]))
    except (KeyError, TypeError, ValueError):
        return None
    if found.days > MAX_AGE_DAYS or not 0.2 < found.ratio < 5.0:
        return None
    return found


def calibrated(est: Estimate, shape: ModelShape, gpu_name: str | None = None) -> Estimate:
    """``est`` scaled by a stored probe of this model and path on this machine, saying so; else ``est``."""
    found = lookup(est.settings, shape, gpu_name)
    if found is None:
        return est
    correction = int(est.total_bytes * (found.ratio - 1.0))
    days = "today" if found.days == 0 else f"{found.days} day{'s' if found.days > 1 else ''} ago"
    note = (f"calibrated by a probe on this machine, {days} (measured {found.ratio:.2f} x the estimate "
            f"of its micro batch)")
    return replace(est, breakdown={**est.breakdown, "probe_correction": correction}, notes=[*est.notes, note])
