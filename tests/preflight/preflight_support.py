"""Shared by the preflight tests (no tests here): a scripted GPU probe, tiny configs, a CUDA host."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from nova.config.load import LoadedConfig, load_yaml_config
from nova.files import GiB
from nova.preflight.environment import CpuInfo, Environment
from nova.preflight.gpus import GpuInfo, GpuProcess, GpuSnapshot

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "model_configs"


class FakeProbe:
    """Answers like NVML would, from a fixed snapshot."""

    def __init__(self, snapshot: GpuSnapshot) -> None:
        self._snapshot = snapshot

    def snapshot(self) -> GpuSnapshot:
        return self._snapshot


def gpu(index: int, free_gib: float, total_gib: float = 24.0, procs: tuple[GpuProcess, ...] = (),
        cc: tuple[int, int] = (8, 9), name: str = "NVIDIA GeForce RTX 4090") -> GpuInfo:
    return GpuInfo(index, name, int(total_gib * GiB), int(free_gib * GiB), cc, 45, procs)


def busy_4090() -> FakeProbe:
    """One 24 GiB GPU with ollama holding 6 GiB (and a desktop a little), 11.2 GiB left."""
    procs = (GpuProcess(4242, "ollama", int(6.0 * GiB)), GpuProcess(900, "Xorg", int(0.2 * GiB)))
    return FakeProbe(GpuSnapshot("ok", (gpu(0, 11.2, procs=procs),), "570.86", "12.8"))


def two_gpus() -> FakeProbe:
    return FakeProbe(GpuSnapshot("ok", (gpu(0, 11.2), gpu(1, 23.1)), "570.86", "12.8"))


def no_gpu() -> FakeProbe:
    return FakeProbe(GpuSnapshot("no_gpu", message="NVML is not available (NVML Shared Library Not Found)"))


def model_dir(tmp: Path, fixture: str = "llama-3-8b") -> Path:
    """A model directory holding only config.json (enough for preflight)."""
    out = tmp / fixture
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text((FIXTURES / f"{fixture}.json").read_text())
    return out


def data_file(tmp: Path, n: int = 200, chat: bool = False) -> Path:
    path = tmp / ("chat.jsonl" if chat else "text.jsonl")
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            rec = ({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
                   if chat else {"text": f"sample number {i} with a few words"})
            f.write(json.dumps(rec) + "\n")
    return path


def write_config(tmp: Path, model: Path, data: Path, **training: object) -> Path:
    cfg = {"name": "pf", "output_dir": str(tmp / "run"),
           "model": {"base": str(model)},
           "data": {"datasets": [{"path": str(data)}], "max_length": 2048},
           "training": {"micro_batch_size": 4, "gradient_accumulation_steps": 4, **training}}
    path = tmp / "phase.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def loaded(tmp: Path, fixture: str = "llama-3-8b", n: int = 200, chat: bool = False,
           **training: object) -> LoadedConfig:
    return load_yaml_config(write_config(tmp, model_dir(tmp, fixture), data_file(tmp, n, chat), **training))


def model_configs() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in FIXTURES.glob("*.json")}


def cuda_env(**versions: str | None) -> Environment:
    """A CUDA host with nova's pinned versions (override one to test the table)."""
    base: dict[str, str | None] = {"torch": "2.13.0", "transformers": "5.23.0", "peft": "0.21.2", "trl": "1.16.0",
                                   "accelerate": "1.15.0", "bitsandbytes": "0.50.2", "nvidia-ml-py": "13.615.71"}
    base.update(versions)
    cpu = CpuInfo(16, 128 * GiB, 120 * GiB, False, "test cpu")
    return Environment(base, "12.8", cpu, "3.11.7")
