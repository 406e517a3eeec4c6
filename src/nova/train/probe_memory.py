"""The peak memory of a probe's training steps, measured where the memory is allocated.

CUDA: ``torch.cuda.max_memory_reserved`` (the caching allocator's pool at its peak, what the
estimate's ``reserved_bytes`` predicts) plus the memory the process holds on the device outside
that pool (the CUDA context, cuBLAS workspaces: the device's used memory minus torch's reserved
memory, read once the steps are done, on a GPU nothing else uses).

CPU: torch has no peak counter for its CPU allocator, so the profiler's memory events are summed
in order: every allocation and free of torch's CPU allocator during the profiled steps, on every
thread. The peak is that running sum's maximum, on top of the bytes alive when profiling began
(every live CPU tensor's storage, counted once). Process RSS is not used: it counts the Python
runtime, the libraries and freed pages glibc has not returned, none of which the estimate models.
The profiler is stopped after ``profiled_steps`` optimizer steps (the peak is there: step 1 makes
the optimizer states, step 2 runs with them), so the later steps time the run without its overhead.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import Any

from nova.lazy import require


@dataclass
class Measured:
    """A measured peak: the bytes, how they were measured, and what they are made of."""

    peak_bytes: int | None = None
    how: str = ""
    detail: dict[str, int] = field(default_factory=dict)


def live_cpu_tensor_bytes() -> int:
    """Bytes of every CPU tensor alive now, each storage counted once (views share theirs)."""
    torch = require("torch")
    seen: dict[int, int] = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.device.type == "cpu" and not obj.is_meta:
            try:
                storage = obj.untyped_storage()
            except (RuntimeError, NotImplementedError):  # a tensor subclass without one storage
                continue
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def peak_of_events(events: list[Any]) -> tuple[int, int]:
    """(peak, final) of the running sum of the profiler's CPU memory events, in the order they happened."""
    torch = require("torch")
    cpu = torch.device("cpu").type
    memory = [e for e in events if e.name() == "[memory]" and str(e.device_type()).lower().endswith(cpu)]
    running = peak = 0
    for event in sorted(memory, key=lambda e: e.start_ns()):
        running += event.nbytes()
        peak = max(peak, running)
    return peak, running


class PeakMeter:
    """Measures the peak of the block it wraps (``with meter:``); ``stop_profiling`` ends the CPU profile early."""

    def __init__(self, device: str, gpu_index: int | None = None) -> None:
        self.device = device
        self.gpu_index = gpu_index
        self.result = Measured()
        self._profiler: Any = None
        self._baseline = 0

    def __enter__(self) -> PeakMeter:
        torch = require("torch")
        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize(self.gpu_index)
            torch.cuda.reset_peak_memory_stats(self.gpu_index)
            return self
        self._baseline = live_cpu_tensor_bytes()
        from torch.profiler import ProfilerActivity, profile

        self._profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._profiler.start()
        return self

    def stop_profiling(self) -> None:
        """End the CPU profile now and read its peak (the steps after it run at full speed)."""
        if self._profiler is None:
            return
        profiler, self._profiler = self._profiler, None
        profiler.stop()
        peak, final = peak_of_events(list(profiler.profiler.kineto_results.events()))
        self.result = Measured(self._baseline + peak, "torch CPU allocator (profiler memory events)",
                               {"alive_before_steps": self._baseline, "steps_peak_above_that": peak,
                                "left_after_steps": self._baseline + final})

    def __exit__(self, *exc: object) -> None:
        if self.device != "cuda":
            self.stop_profiling()
            return
        torch = require("torch")
        torch.cuda.synchronize(self.gpu_index)
        reserved = int(torch.cuda.max_memory_reserved(self.gpu_index))
        free, total = torch.cuda.mem_get_info(self.gpu_index)
        outside = max(0, int(total - free) - int(torch.cuda.memory_reserved(self.gpu_index)))
        self.result = Measured(reserved + outside, "torch.cuda.max_memory_reserved + memory outside torch's pool",
                               {"max_memory_reserved": reserved, "outside_pool": outside,
                                "max_memory_allocated": int(torch.cuda.max_memory_allocated(self.gpu_index))})


def step_callback(meter: PeakMeter, profiled_steps: int, times: list[float]) -> Any:
    """A TrainerCallback that stops the CPU profile after ``profiled_steps`` steps and times every step."""
    import time

    transformers = require("transformers")

    class ProbeSteps(transformers.TrainerCallback):  # type: ignore[misc]
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            times.append(time.perf_counter())

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            times.append(time.perf_counter())
            if state.global_step == profiled_steps:
                meter.stop_profiling()

    return ProbeSteps()
