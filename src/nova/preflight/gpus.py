"""What the GPUs look like right now, through NVML, behind a small interface tests can fake.

NVML (nvidia-ml-py) answers in milliseconds and needs no CUDA context, unlike torch.cuda,
which takes seconds to import and initialise. It also sees processes of other programs
(ollama, a notebook left open) that hold memory a training run will need.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from nova.errors import NovaError
from nova.files import GiB, MiB
from nova.system import process_name as system_process_name


@dataclass(frozen=True)
class GpuProcess:
    """A process holding memory on a GPU."""

    pid: int
    name: str
    used_bytes: int


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as NVML reports it (or as ``--gpu-memory`` describes a hypothetical one)."""

    index: int
    name: str
    total_bytes: int
    free_bytes: int
    compute_capability: tuple[int, int] | None = None
    temperature_c: int | None = None
    processes: tuple[GpuProcess, ...] = ()
    hypothetical: bool = False

    @property
    def bf16(self) -> bool:
        """Native bf16 needs compute capability 8.0 (Ampere) or newer."""
        return self.compute_capability is not None and self.compute_capability >= (8, 0)

    @property
    def flash_attention(self) -> bool:
        """FlashAttention-2 kernels exist for Ampere (8.0) and newer."""
        return self.compute_capability is not None and self.compute_capability >= (8, 0)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["compute_capability"] = (
            f"{self.compute_capability[0]}.{self.compute_capability[1]}" if self.compute_capability else None)
        out["bf16"] = self.bf16
        out["flash_attention"] = self.flash_attention
        out["processes"] = [asdict(p) for p in self.processes]
        return out


@dataclass(frozen=True)
class GpuSnapshot:
    """All GPUs, or why there are none (``status``: ok, no_gpu, no_nvml, error, hypothetical)."""

    status: str
    gpus: tuple[GpuInfo, ...] = ()
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class GpuProbe(Protocol):
    """Anything that can report the GPUs (the real NVML probe, or a fake in tests)."""

    def snapshot(self) -> GpuSnapshot: ...


class NvmlProbe:
    """The real probe: pynvml from nvidia-ml-py, imported only when called."""

    def snapshot(self) -> GpuSnapshot:
        try:
            import pynvml
        except ImportError:
            return GpuSnapshot("no_nvml", message="nvidia-ml-py is not installed (pip install nvidia-ml-py)")
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            return GpuSnapshot("no_gpu", message=f"NVML is not available ({_nvml_text(exc)}): no NVIDIA driver")
        try:
            return self._read(pynvml)
        except Exception as exc:
            return GpuSnapshot("error", message=f"NVML query failed: {_nvml_text(exc)}")
        finally:
            with contextlib.suppress(Exception):
                pynvml.nvmlShutdown()

    def _read(self, nv: Any) -> GpuSnapshot:
        driver = _text(nv.nvmlSystemGetDriverVersion())
        cuda = nv.nvmlSystemGetCudaDriverVersion_v2() if hasattr(nv, "nvmlSystemGetCudaDriverVersion_v2") else None
        gpus = tuple(self._gpu(nv, i) for i in range(nv.nvmlDeviceGetCount()))
        status = "ok" if gpus else "no_gpu"
        return GpuSnapshot(status, gpus, driver, f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda else None,
                           "" if gpus else "NVML found no GPU")

    def _gpu(self, nv: Any, index: int) -> GpuInfo:
        handle = nv.nvmlDeviceGetHandleByIndex(index)
        mem = nv.nvmlDeviceGetMemoryInfo(handle)
        try:
            cc: tuple[int, int] | None = tuple(nv.nvmlDeviceGetCudaComputeCapability(handle))  # type: ignore[assignment]
        except Exception:
            cc = None
        try:
            temp = int(nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU))
        except Exception:
            temp = None
        return GpuInfo(index, _text(nv.nvmlDeviceGetName(handle)), int(mem.total), int(mem.free), cc, temp,
                       self._processes(nv, handle))

    def _processes(self, nv: Any, handle: Any) -> tuple[GpuProcess, ...]:
        procs = []
        for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            try:
                procs.extend(getattr(nv, getter)(handle))
            except Exception:
                continue
        out: dict[int, GpuProcess] = {}
        for p in procs:
            used = int(p.usedGpuMemory or 0) if isinstance(p.usedGpuMemory, int) else 0
            if p.pid in out:
                used = max(used, out[p.pid].used_bytes)
            out[p.pid] = GpuProcess(int(p.pid), process_name(int(p.pid), nv), used)
        return tuple(sorted(out.values(), key=lambda p: -p.used_bytes))


def process_name(pid: int, nv: Any = None) -> str:
    """The short program name of a pid (psutil; NVML's name is the full path, with / or \\)."""
    name = system_process_name(pid)
    if name:
        return name
    if nv is not None:
        try:
            return re.split(r"[\\/]", _text(nv.nvmlSystemGetProcessName(pid)))[-1]
        except Exception:
            pass
    return f"pid {pid}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvml_text(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": GiB, "B": 1, "K": 1024, "M": MiB, "G": GiB, "T": 1024**4}


def parse_size(text: str) -> int:
    """'24GiB', '24G', '24 GB' or '24' (GiB) -> bytes. GB is read as GiB, as GPU makers mean it."""
    m = _SIZE.match(text)
    if not m:
        raise NovaError(f"cannot read memory size '{text}'", hint="e.g. --gpu-memory 24GiB")
    unit = (m.group(2) or "").upper().rstrip("B").rstrip("I")
    if (m.group(2) or "").upper() == "B":
        unit = "B"
    return int(float(m.group(1)) * _UNITS[unit])


class HypotheticalProbe:
    """Answers for GPUs the user does not have: ``--gpu-memory 24GiB [--gpus N]``."""

    def __init__(self, memory_bytes: int, count: int = 1) -> None:
        self.memory_bytes = memory_bytes
        self.count = count

    def snapshot(self) -> GpuSnapshot:
        gpus = tuple(GpuInfo(i, "hypothetical GPU", self.memory_bytes, self.memory_bytes, (8, 0),
                             hypothetical=True) for i in range(self.count))
        return GpuSnapshot("hypothetical", gpus, message="answering for hypothetical GPUs (--gpu-memory); "
                           "assumed empty, compute capability 8.0")
