"""GPU scenarios through a fake NVML: a busy GPU, two GPUs, no GPU, hypothetical GPUs."""

from __future__ import annotations

from pathlib import Path

import pytest
from preflight_support import FakeProbe, GiB, busy_4090, cuda_env, gpu, loaded, no_gpu, two_gpus

from nova.errors import NovaError
from nova.preflight import run_preflight
from nova.preflight.gpus import GpuSnapshot, NvmlProbe, parse_size


def test_busy_gpu_fails_and_the_fix_names_ollama_and_the_batch_change(tmp_path: Path) -> None:
    report = run_preflight(loaded(tmp_path, "mistral-7b-v0.2"), probe=busy_4090(), env=cuda_env())
    memory = report.check("memory")
    assert memory is not None and memory.status == "fail"
    assert report.verdict == "fail"
    assert "GPU 0 has 11.2 GiB free because ollama holds 6.0 GiB" in memory.message
    assert "needs about" in memory.message
    assert "stop ollama" in memory.fix
    # the batch change keeps the effective batch of 4 x 4 = 16
    assert "micro_batch_size 4 -> " in memory.fix and "(same effective batch 16)" in memory.fix
    gpu_line = report.check("gpu")
    assert gpu_line is not None and "ollama: 6.0 GiB" in gpu_line.message


def test_busy_gpu_with_auto_fit_passes_with_the_choice(tmp_path: Path) -> None:
    report = run_preflight(loaded(tmp_path, "mistral-7b-v0.2", auto_fit=True), probe=busy_4090(), env=cuda_env())
    memory = report.check("memory")
    assert memory is not None and memory.status == "pass", memory
    assert report.auto_fit is not None and report.auto_fit["fits"]
    assert report.auto_fit["micro_batch_size"] * report.auto_fit["gradient_accumulation_steps"] == 16


def test_auto_picks_the_gpu_with_the_most_free_memory(tmp_path: Path) -> None:
    report = run_preflight(loaded(tmp_path, "mistral-7b-v0.2"), probe=two_gpus(), env=cuda_env())
    assert report.selected_gpu == 1
    memory = report.check("memory")
    assert memory is not None and memory.status == "pass" and "GPU 1 has 23.1 GiB free" in memory.message


def test_pinned_busy_gpu_suggests_the_free_one(tmp_path: Path) -> None:
    report = run_preflight(loaded(tmp_path, "mistral-7b-v0.2", gpu=0), probe=two_gpus(), env=cuda_env())
    memory = report.check("memory")
    assert memory is not None and memory.status == "fail"
    assert "use GPU 1 (23.1 GiB free; training.gpu: 1)" in memory.fix


def test_missing_gpu_index_fails(tmp_path: Path) -> None:
    report = run_preflight(loaded(tmp_path, "smollm2-135m", gpu=3), probe=two_gpus(), env=cuda_env())
    check = report.check("gpu_select")
    assert check is not None and check.status == "fail" and "0, 1" in check.message


def test_no_gpu_takes_the_cpu_path(tmp_path: Path) -> None:
    report = run_preflight(loaded(tmp_path, "smollm2-135m"), probe=no_gpu())
    gpu_check = report.check("gpu")
    assert gpu_check is not None and gpu_check.status == "warn"
    assert "no NVIDIA GPU" in gpu_check.message and "CPU" in gpu_check.message and "cores" in gpu_check.message
    env = report.check("environment")
    assert env is not None and "not checked (no GPU)" in env.message
    memory = report.check("memory")
    assert memory is not None and "RAM on the CPU" in memory.message
    assert report.estimate is not None and report.estimate["breakdown"]["cuda_context"] == 0
    assert report.gpus == [] and report.selected_gpu is None


def test_cpu_build_of_torch_with_a_gpu_fails(tmp_path: Path) -> None:
    env = cuda_env()
    cpu_torch = type(env)(env.versions, None, env.cpu, env.python)
    report = run_preflight(loaded(tmp_path, "smollm2-135m"), probe=two_gpus(), env=cpu_torch)
    check = report.check("environment")
    assert check is not None and check.status == "fail" and "CPU build" in check.message


def test_old_gpu_without_bf16_rejects_bf16(tmp_path: Path) -> None:
    probe = FakeProbe(GpuSnapshot("ok", (gpu(0, 15.0, 16.0, cc=(7, 5), name="Tesla T4"),), "535.0", "12.2"))
    ok = run_preflight(loaded(tmp_path, "smollm2-135m"), probe=probe, env=cuda_env())
    precision = ok.check("precision")
    assert precision is not None and precision.status == "pass" and "fp16" in precision.message
    tmp2 = tmp_path / "b"
    tmp2.mkdir()
    from preflight_support import data_file, model_dir, write_config

    from nova.config.load import load_yaml_config

    path = write_config(tmp2, model_dir(tmp2, "smollm2-135m"), data_file(tmp2))
    bad = run_preflight(load_yaml_config(path, ["model.compute_dtype=bf16"]), probe=probe, env=cuda_env())
    precision = bad.check("precision")
    assert precision is not None and precision.status == "fail" and "compute_dtype" in precision.fix


@pytest.mark.parametrize(("memory", "verdict"), [("48GiB", "pass"), ("8GiB", "fail")])
def test_hypothetical_gpu_answers_for_hardware_we_do_not_have(tmp_path: Path, memory: str, verdict: str) -> None:
    report = run_preflight(loaded(tmp_path, "mistral-7b-v0.2"), gpu_memory=memory, env=cuda_env(), probe=no_gpu())
    check = report.check("memory")
    assert check is not None and check.status == verdict
    assert report.gpus[0]["hypothetical"] is True and report.gpus[0]["total_bytes"] == parse_size(memory)


def test_hypothetical_gpus_count(tmp_path: Path) -> None:
    report = run_preflight(loaded(tmp_path, "smollm2-135m"), gpu_memory="24GiB", gpus=2, env=cuda_env())
    assert len(report.gpus) == 2


def test_more_gpus_than_present_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(NovaError, match="--gpus 3"):
        run_preflight(loaded(tmp_path, "smollm2-135m"), gpus=3, probe=two_gpus(), env=cuda_env())


SIZES = [("24GiB", 24 * GiB), ("24G", 24 * GiB), ("24 GB", 24 * GiB), ("80", 80 * GiB),
         ("512MiB", 512 * 1024**2), ("1.5GiB", int(1.5 * GiB))]


@pytest.mark.parametrize(("text", "expected"), SIZES)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_parse_size_rejects_garbage() -> None:
    with pytest.raises(NovaError, match="24GiB"):
        parse_size("lots")


def test_real_nvml_probe_never_raises() -> None:
    """On a machine without a driver NVML must say so, not crash."""
    snap = NvmlProbe().snapshot()
    assert snap.status in ("ok", "no_gpu", "no_nvml", "error")
    if snap.status != "ok":
        assert snap.message


class _Mem:
    def __init__(self, total: int, free: int) -> None:
        self.total, self.free, self.used = total, free, total - free


class _Proc:
    def __init__(self, pid: int, used: int) -> None:
        self.pid, self.usedGpuMemory = pid, used


def _fake_pynvml(devices: list[dict]) -> object:
    """A stand-in for the pynvml module with the calls NvmlProbe makes."""

    class Fake:
        NVML_TEMPERATURE_GPU = 0
        shut = False

        def nvmlInit(self) -> None: ...
        def nvmlShutdown(self) -> None:
            Fake.shut = True
        def nvmlSystemGetDriverVersion(self) -> bytes:
            return b"570.86.10"
        def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
            return 12080
        def nvmlDeviceGetCount(self) -> int:
            return len(devices)
        def nvmlDeviceGetHandleByIndex(self, i: int) -> dict:
            return devices[i]
        def nvmlDeviceGetName(self, h: dict) -> str:
            return h["name"]
        def nvmlDeviceGetMemoryInfo(self, h: dict) -> _Mem:
            return _Mem(h["total"], h["free"])
        def nvmlDeviceGetCudaComputeCapability(self, h: dict) -> tuple[int, int]:
            return h["cc"]
        def nvmlDeviceGetTemperature(self, h: dict, sensor: int) -> int:
            return 61
        def nvmlDeviceGetComputeRunningProcesses(self, h: dict) -> list[_Proc]:
            return [_Proc(pid, used) for pid, used in h["procs"]]
        def nvmlDeviceGetGraphicsRunningProcesses(self, h: dict) -> list[_Proc]:
            return []
        def nvmlSystemGetProcessName(self, pid: int) -> bytes:
            return b"/usr/local/bin/ollama"

    return Fake()


def test_nvml_probe_reads_gpus_processes_and_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    fake = _fake_pynvml([{"name": "NVIDIA GeForce RTX 4090", "total": 24 * GiB, "free": 11 * GiB, "cc": (8, 9),
                          "procs": [(999_999_991, 6 * GiB)]}])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    snap = NvmlProbe().snapshot()
    assert snap.status == "ok" and snap.driver_version == "570.86.10" and snap.cuda_driver_version == "12.8"
    (g,) = snap.gpus
    assert g.name == "NVIDIA GeForce RTX 4090" and g.free_bytes == 11 * GiB and g.bf16 and g.temperature_c == 61
    assert g.processes[0].name == "ollama" and g.processes[0].used_bytes == 6 * GiB
    assert type(fake).shut


def test_nvml_init_failure_means_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    fake = _fake_pynvml([])

    def boom() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    fake.nvmlInit = boom  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    snap = NvmlProbe().snapshot()
    assert snap.status == "no_gpu" and "NVML Shared Library Not Found" in snap.message


def test_nvml_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pynvml", None)
    snap = NvmlProbe().snapshot()
    assert snap.status == "no_nvml" and "nvidia-ml-py" in snap.message
