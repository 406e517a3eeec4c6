"""Reading the training GPU during a run, through the preflight NVML probe.

Each reading initialises NVML, reads one device and shuts NVML down (milliseconds); the
process list that preflight needs is skipped here because it is slow on busy machines.
"""

from __future__ import annotations

import os
from typing import Any

from nova.monitor.alerts import GpuSample
from nova.preflight.gpus import GpuProcess, GpuSnapshot, NvmlProbe


def nvml_index(cuda_index: int) -> int:
    """NVML numbers GPUs ignoring CUDA_VISIBLE_DEVICES; torch numbers the visible ones.

    With CUDA_VISIBLE_DEVICES=2,3 torch's cuda:0 is NVML's 2. UUID lists are left as they are.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if not visible:
        return cuda_index
    parts = [p.strip() for p in visible.split(",")]
    if all(p.isdigit() for p in parts) and cuda_index < len(parts):
        return int(parts[cuda_index])
    return cuda_index


class GpuSampler(NvmlProbe):
    """One GPU's temperature, utilization and memory; None when NVML or the GPU is not there.

    After the first failure it stops asking, so a machine without NVML pays once.
    """

    def __init__(self, cuda_index: int) -> None:
        self.index = nvml_index(cuda_index)
        self.disabled = False

    def _read(self, nv: Any) -> GpuSnapshot:
        info = self._gpu(nv, self.index)
        try:
            util: int | None = int(nv.nvmlDeviceGetUtilizationRates(nv.nvmlDeviceGetHandleByIndex(self.index)).gpu)
        except Exception:
            util = None
        return GpuSnapshot("ok", (info,), extra={"utilization_pct": util})

    def _processes(self, nv: Any, handle: Any) -> tuple[GpuProcess, ...]:
        return ()

    def sample(self) -> GpuSample | None:
        if self.disabled:
            return None
        try:
            snap = self.snapshot()
        except Exception:  # the probe already catches NVML errors; this is the belt to its braces
            snap = GpuSnapshot("error")
        if snap.status != "ok" or not snap.gpus:
            self.disabled = True
            return None
        gpu = snap.gpus[0]
        util = snap.extra.get("utilization_pct")
        return GpuSample(temperature_c=float(gpu.temperature_c) if gpu.temperature_c is not None else None,
                         utilization_pct=float(util) if util is not None else None,
                         used_bytes=gpu.total_bytes - gpu.free_bytes, total_bytes=gpu.total_bytes)
