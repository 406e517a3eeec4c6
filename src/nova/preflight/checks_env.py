"""Checks of the machine: package versions, every GPU, which GPU a stage uses, and precision.

They run first because they decide what the memory check compares against (a GPU's free
memory or the CPU's RAM) and which compute dtype the stage gets. Read-only: package metadata
and NVML; nothing imports torch or bitsandbytes.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from nova.config.schema import ModelConfig
from nova.preflight.environment import Environment, declared_conflicts, known_bad
from nova.preflight.gpus import GpuInfo, GpuSnapshot
from nova.preflight.report import Check, gib
from nova.system import AppleGpu

HOT_C = 85  # most GPUs start throttling in the high 80s


def check_environment(env: Environment, snapshot: GpuSnapshot, quantization: str) -> Check:
    """Versions, the torch build against the hardware, and bitsandbytes where it matters."""
    v = env.versions
    have = ", ".join(f"{k} {v[k]}" for k in ("torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes")
                     if v.get(k))
    missing = [k for k in ("torch", "transformers", "peft", "trl", "accelerate") if not v.get(k)]
    bad = known_bad(v)
    if snapshot.status == "ok" and env.torch_cuda is None:
        bad.append(f"torch {v.get('torch')} is a CPU build but an NVIDIA GPU is present")
    conflicts = declared_conflicts(v)
    bnb = _bitsandbytes_state(env, snapshot.status == "ok")
    message = f"{have}; torch CUDA build {env.torch_cuda or 'none (CPU)'}"
    if snapshot.driver_version:
        message += f", driver {snapshot.driver_version} (CUDA {snapshot.cuda_driver_version or '?'})"
    message += f"; bitsandbytes: {bnb}"
    if missing:
        return Check("environment", "fail", f"missing packages: {', '.join(missing)}; {message}",
                     f"pip install {' '.join(missing)}")
    if bad or conflicts:
        fix = "install a CUDA build of torch (pytorch.org)" if any("CPU build" in p for p in bad) else \
            "pip install -U " + " ".join(sorted({p.split()[0] for p in bad + conflicts}))
        return Check("environment", "fail" if bad else "warn", f"{'; '.join(bad + conflicts)}. {message}", fix)
    if bnb.startswith("missing") and quantization != "none" and snapshot.status == "ok":
        return Check("environment", "fail", message, "pip install bitsandbytes (needed for 4-bit and 8-bit)")
    return Check("environment", "pass", message)


def _bitsandbytes_state(env: Environment, gpu_present: bool) -> str:
    """Whether bitsandbytes can run here, judged from its files (importing it costs seconds)."""
    version = env.versions.get("bitsandbytes")
    if not gpu_present:
        return f"{version or 'not installed'}, not checked (no GPU)"
    if version is None:
        return "missing"
    spec = importlib.util.find_spec("bitsandbytes")
    locations = list(spec.submodule_search_locations or []) if spec else []
    libs = [p.name for loc in locations for p in Path(loc).glob("libbitsandbytes_cuda*")]
    if not libs:
        return f"{version}, no CUDA library found in the package"
    return f"{version} with {len(libs)} CUDA libraries (not imported)"


def describe_gpu(g: GpuInfo) -> str:
    """One GPU in a line: memory, capability, temperature and who holds memory on it."""
    cc = f"cc {g.compute_capability[0]}.{g.compute_capability[1]}" if g.compute_capability else "cc ?"
    feats = ", ".join(f for f, ok in (("bf16", g.bf16), ("flash-attn", g.flash_attention)) if ok) or "no bf16"
    temp = f", {g.temperature_c} C" if g.temperature_c is not None else ""
    held = "; ".join(f"{p.name}: {gib(p.used_bytes)}" for p in g.processes)
    tail = f"; held by {held}" if held else ""
    return f"GPU {g.index} {g.name}: {gib(g.free_bytes)} free of {gib(g.total_bytes)}, {cc} ({feats}){temp}{tail}"


def check_gpus(snapshot: GpuSnapshot, env: Environment) -> Check:
    """Every GPU with its memory, capability and the processes on it; or the CPU path, plainly."""
    if snapshot.gpus:
        body = " | ".join(describe_gpu(g) for g in snapshot.gpus)
        if snapshot.status == "hypothetical":
            body = f"{snapshot.message}: {body}"
        hot = [g for g in snapshot.gpus if g.temperature_c is not None and g.temperature_c >= HOT_C]
        if hot:
            return Check("gpu", "warn", body, f"GPU {hot[0].index} is at {hot[0].temperature_c} C before training: "
                         "check its cooling, or what else is running on it")
        return Check("gpu", "pass", body)
    if env.apple is not None:
        return Check("gpu", "pass", describe_apple(env.apple))
    cpu = env.cpu
    bf16 = f"yes ({', '.join(cpu.flags) or 'NOVA_CPU_BF16=1'}, bf16 compute)" if cpu.bf16 else "no (fp32 compute)"
    return Check("gpu", "warn",
                 f"no NVIDIA GPU: {snapshot.message or 'none found'}. Training would run on the CPU: "
                 f"{cpu.cores} cores, {gib(cpu.ram_available_bytes)} RAM available of {gib(cpu.ram_total_bytes)}, "
                 f"native bf16: {bf16}",
                 "fine for a tiny model or a smoke test; for a real model train on a CUDA GPU, or answer for one "
                 "with --gpu-memory 24GiB")


def describe_apple(a: AppleGpu) -> str:
    """Apple Silicon's GPU in a line: it has no memory of its own, it shares the RAM (unified memory)."""
    dtype = "bf16" if a.bf16 else "fp32 (torch runs bf16 on mps from macOS 14)"
    return (f"{a.chip} GPU (mps), macOS {a.macos or '?'}: unified memory shared with the CPU and the system, "
            f"{gib(a.unified_available)} available of {gib(a.unified_total)}; compute dtype auto: {dtype}")


def check_apple_device(a: AppleGpu, model: ModelConfig) -> Check:
    """Whether the phase's quantization runs on Apple's GPU: refused with the fix, or said to be unmeasured."""
    from nova.model.loading import mps_quantization_problem

    problem = mps_quantization_problem(model.quantization)
    if problem is not None:
        return Check("device", "fail", f"{problem[0]}; training would run on {a.chip}'s GPU (mps)", problem[1])
    if model.quantization == "none":
        return Check("device", "pass", f"{a.chip} GPU (mps): LoRA on the unquantized model")
    return Check("device", "warn", f"{model.quantization} on {a.chip}'s GPU (mps) runs through bitsandbytes' mps "
                 "backend (PyTorch kernels before macOS 26), slower than CUDA and not measured by nova",
                 "if it fails or is too slow, set model.quantization: none (or choose a smaller model)")


def select_gpu(snapshot: GpuSnapshot, wanted: str | int) -> tuple[GpuInfo | None, Check | None]:
    """``auto`` takes the GPU with the most free memory; an index must exist."""
    if not snapshot.gpus:
        return None, None
    if wanted == "auto":
        return max(snapshot.gpus, key=lambda g: (g.free_bytes, -g.index)), None
    for g in snapshot.gpus:
        if g.index == wanted:
            return g, None
    have = ", ".join(str(g.index) for g in snapshot.gpus)
    return None, Check("gpu_select", "fail", f"training.gpu is {wanted} but the GPUs are {have}",
                       "set training.gpu to one of them, or 'auto' (the GPU with the most free memory)")


def check_precision(model: ModelConfig, gpu: GpuInfo | None, cpu_bf16: bool = False,
                    apple: AppleGpu | None = None) -> Check:
    """bf16 needs compute capability 8.0 (FlashAttention-2 too); on mps macOS 14; on a CPU, the
    avx512_bf16/amx_bf16 flags."""
    from nova.model.loading import dtype_for  # the function training resolves the dtype with

    if gpu is None and apple is not None:
        dtype = dtype_for(model.compute_dtype, "mps", apple.bf16)
        if dtype == "bf16" and not apple.bf16:
            return Check("precision", "fail", f"model.compute_dtype is bf16 but torch runs bf16 on Apple's GPU (mps) "
                         f"only from macOS 14 (this is {apple.macos or 'older'})",
                         "set model.compute_dtype: auto (fp32 here), or update macOS")
        return Check("precision", "pass", f"Apple GPU (mps): compute dtype {dtype}")
    if gpu is None:
        dtype = dtype_for(model.compute_dtype, "cpu", cpu_bf16)
        if dtype == "bf16" and not cpu_bf16:
            return Check("precision", "warn", "model.compute_dtype is bf16 but this CPU has no native bf16 "
                         "(avx512_bf16/amx_bf16): emulated bf16 is about 40x slower",
                         "set model.compute_dtype: auto (fp32 on the CPU)")
        return Check("precision", "pass", f"CPU: compute dtype {dtype}")
    resolved = dtype_for(model.compute_dtype, "cuda", gpu.bf16)
    if resolved == "bf16" and not gpu.bf16:
        return Check("precision", "fail", f"model.compute_dtype is bf16 but GPU {gpu.index} ({gpu.name}) has no "
                     "native bf16 (needs compute capability 8.0)", "set model.compute_dtype: auto (fp16 here)")
    if model.attn_implementation == "flash_attention_2" and not gpu.flash_attention:
        return Check("precision", "fail", f"flash_attention_2 needs compute capability 8.0; GPU {gpu.index} has "
                     "less", "set model.attn_implementation: sdpa")
    return Check("precision", "pass", f"GPU {gpu.index}: compute dtype {resolved}, attention "
                 f"{model.attn_implementation}")
