"""The software and the host: package versions, the torch build, CPU facts.

Read without importing torch, transformers or bitsandbytes (each costs seconds): versions
come from package metadata, the torch CUDA build from ``torch/version.py`` read as text,
the CPU, RAM and an Apple Silicon GPU from nova.system (the same on Linux, Windows and macOS).
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nova import system

PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes", "nvidia-ml-py")

# Combinations flagged before a run: nova's floors from pyproject.toml (older releases lack APIs nova
# calls) and pairs that break together. (package, bad below, other package, other at or above, reason)
KNOWN_BAD: tuple[tuple[str, str, str | None, str | None, str], ...] = (
    ("transformers", "5.0", None, None, "nova is written against the transformers 5 API (pyproject floor)"),
    ("peft", "0.17", None, None, "below nova's PEFT floor (pyproject); older PEFT predates transformers 5"),
    ("trl", "1.0", None, None, "nova uses the TRL 1.x trainer arguments (pyproject floor)"),
    ("bitsandbytes", "0.45", None, None, "below nova's bitsandbytes floor (pyproject)"),
    ("accelerate", "1.0", "transformers", "5.0", "the transformers 5 Trainer is built on accelerate 1.x"),
)


def version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def _key(text: str) -> tuple[int, ...]:
    """A comparable version key from the leading numbers ('2.13.0+cpu' -> (2, 13, 0))."""
    return tuple(int(p) for p in re.findall(r"\d+", text.split("+")[0])[:3])


def version_less(a: str, b: str) -> bool:
    return _key(a) < _key(b)


def known_bad(versions: dict[str, str | None]) -> list[str]:
    """Problems from the KNOWN_BAD table for the installed versions."""
    out = []
    for pkg, floor, other, other_from, reason in KNOWN_BAD:
        have = versions.get(pkg)
        if have is None or not version_less(have, floor):
            continue
        if other is not None:
            other_have = versions.get(other)
            if other_have is None or (other_from and version_less(other_have, other_from)):
                continue
        out.append(f"{pkg} {have} < {floor}: {reason}")
    return out


def declared_conflicts(versions: dict[str, str | None]) -> list[str]:
    """Requirements that trl/peft/accelerate/transformers declare and the installed versions break."""
    try:
        from packaging.requirements import Requirement
    except ImportError:
        return []
    out = []
    for pkg in ("transformers", "peft", "trl", "accelerate"):
        try:
            reqs = md.requires(pkg) or []
        except md.PackageNotFoundError:
            continue
        for text in reqs:
            req = Requirement(text)
            if req.marker is not None or req.name not in versions:
                continue
            have = versions.get(req.name)
            if have and req.specifier and not req.specifier.contains(have.split("+")[0], prereleases=True):
                out.append(f"{pkg} {versions.get(pkg)} requires {req.name}{req.specifier}, found {have}")
    return out


def torch_cuda_build() -> str | None:
    """The CUDA version torch was built for ('12.8'), or None for a CPU build, without importing torch."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "version.py"
    try:
        m = re.search(r"^cuda\s*(?::\s*\S+)?\s*=\s*['\"]([^'\"]+)['\"]", path.read_text(encoding="utf-8"), re.MULTILINE)
    except OSError:
        return None
    return m.group(1) if m else None


@dataclass(frozen=True)
class CpuInfo:
    """What training on the CPU would have to work with."""

    cores: int
    ram_total_bytes: int
    ram_available_bytes: int
    bf16: bool
    model: str = ""
    flags: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {"cores": self.cores, "ram_total_bytes": self.ram_total_bytes,
                "ram_available_bytes": self.ram_available_bytes, "bf16": self.bf16, "model": self.model,
                "bf16_flags": list(self.flags)}


def cpu_info(cpuinfo: str | None = None, memory: tuple[int, int] | None = None) -> CpuInfo:
    """The CPU and RAM through nova.system (psutil, and the CPU flags where the platform lists them).

    ``cpuinfo`` (the text of Linux's cpuinfo file) and ``memory`` (total, available) are passed
    in by tests.
    """
    model, bf16_flags = system.cpu_description() if cpuinfo is None else system.parse_cpuinfo(cpuinfo)
    total, available = system.memory() if memory is None else memory
    from nova.model.loading import cpu_has_native_bf16  # NOVA_CPU_BF16 answers as it does for training

    return CpuInfo(system.usable_cores(), total, available, cpu_has_native_bf16(bool(bf16_flags)), model, bf16_flags)


@dataclass(frozen=True)
class Environment:
    versions: dict[str, str | None]
    torch_cuda: str | None
    cpu: CpuInfo
    python: str
    apple: system.AppleGpu | None = None  # an Apple Silicon Mac: training runs on its GPU (mps)
    platform: str = field(default_factory=lambda: sys.platform)

    def to_dict(self) -> dict[str, Any]:
        return {"versions": dict(self.versions), "torch_cuda": self.torch_cuda, "cpu": self.cpu.to_dict(),
                "python": self.python, "platform": self.platform,
                "apple_gpu": self.apple.to_dict() if self.apple else None}


def environment() -> Environment:
    import platform

    return Environment({p: version(p) for p in PACKAGES}, torch_cuda_build(), cpu_info(),
                       platform.python_version(), system.apple_gpu())
