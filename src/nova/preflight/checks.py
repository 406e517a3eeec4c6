"""The individual checks. Each returns ``Check``s with a status and a concrete next step.

Checks only read: files, package metadata, NVML. None of them loads a model or imports torch.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nova.config.data_schema import DataConfig, DatasetSpec
from nova.config.schema import LoraConfig, ModelConfig, StageConfig
from nova.errors import NovaError, ProblemList
from nova.preflight.environment import Environment, declared_conflicts, known_bad
from nova.preflight.estimate import ALL_LINEAR, Estimate, ModelShape, Settings, estimate_for_shape
from nova.preflight.fit import fit_batch
from nova.preflight.gpus import GpuInfo, GpuSnapshot
from nova.preflight.model_source import ModelSource
from nova.preflight.report import Check

GiB = 1024**3
TIGHT = 0.90  # above 90% of free memory is a warning: allocator spikes and longer batches
LR_RANGE = {"sft": (1e-5, 1e-3), "dpo": (1e-6, 1e-4)}
EPOCHS_HIGH, EPOCHS_LOW = 5.0, 0.3
HELD_WORTH_NAMING = 256 * 1024**2
HOT_C = 85  # most GPUs start throttling in the high 80s
CPU_RUNTIME_BYTES = GiB  # resident size of a Python process with torch and transformers loaded


def gib(n: float) -> str:
    """GiB with one decimal; MiB below 1 GiB so tiny models do not read '0.0 GiB'."""
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / 1024**2:.0f} MiB"


# ---------------------------------------------------------------- environment and hardware

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
    import importlib.util

    spec = importlib.util.find_spec("bitsandbytes")
    locations = list(spec.submodule_search_locations or []) if spec else []
    libs = [p.name for loc in locations for p in Path(loc).glob("libbitsandbytes_cuda*")]
    if not libs:
        return f"{version}, no CUDA library found in the package"
    return f"{version} with {len(libs)} CUDA libraries (not imported)"


def describe_gpu(g: GpuInfo) -> str:
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
    cpu = env.cpu
    bf16 = f"yes ({', '.join(cpu.flags)})" if cpu.bf16 else "no (fp32 compute)"
    return Check("gpu", "warn",
                 f"no NVIDIA GPU: {snapshot.message or 'none found'}. Training would run on the CPU: "
                 f"{cpu.cores} cores, {gib(cpu.ram_available_bytes)} RAM available of {gib(cpu.ram_total_bytes)}, "
                 f"native bf16: {bf16}",
                 "fine for a tiny model or a smoke test; for a real model train on a CUDA GPU, or answer for one "
                 "with --gpu-memory 24GiB")


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


def check_precision(model: ModelConfig, gpu: GpuInfo | None, cpu_bf16: bool = False) -> Check:
    """bf16 needs compute capability 8.0 (FlashAttention-2 too); on a CPU, the avx512_bf16/amx_bf16 flags."""
    if gpu is None:
        dtype = "fp32" if model.compute_dtype == "auto" else model.compute_dtype
        if dtype == "bf16" and not cpu_bf16:
            return Check("precision", "warn", "model.compute_dtype is bf16 but this CPU has no native bf16 "
                         "(avx512_bf16/amx_bf16): emulated bf16 is about 40x slower",
                         "set model.compute_dtype: auto (fp32 on the CPU)")
        return Check("precision", "pass", f"CPU: compute dtype {dtype}")
    resolved = model.compute_dtype if model.compute_dtype != "auto" else ("bf16" if gpu.bf16 else "fp16")
    if resolved == "bf16" and not gpu.bf16:
        return Check("precision", "fail", f"model.compute_dtype is bf16 but GPU {gpu.index} ({gpu.name}) has no "
                     "native bf16 (needs compute capability 8.0)", "set model.compute_dtype: auto (fp16 here)")
    if model.attn_implementation == "flash_attention_2" and not gpu.flash_attention:
        return Check("precision", "fail", f"flash_attention_2 needs compute capability 8.0; GPU {gpu.index} has "
                     "less", "set model.attn_implementation: sdpa")
    return Check("precision", "pass", f"GPU {gpu.index}: compute dtype {resolved}, attention "
                 f"{model.attn_implementation}")


# ---------------------------------------------------------------- memory

def stage_settings(model: ModelConfig, lora: LoraConfig, stage: StageConfig, *, on_gpu: bool,
                   reference_adapter: bool = False) -> Settings:
    """The memory-relevant settings of one stage, with nova's defaults for what the config leaves open."""
    fp32 = model.compute_dtype == "fp32" or (model.compute_dtype == "auto" and not on_gpu)
    compute = 4 if fp32 else 2
    targets = ALL_LINEAR if lora.target_modules == "all-linear" else tuple(lora.target_modules)
    t = stage.training
    seq = stage.data.max_length
    if stage.method == "dpo":  # TRL caps each pair at prompt + completion lengths (dpo section)
        seq = min(seq, stage.dpo.max_prompt_length + stage.dpo.max_completion_length)
    return Settings(
        quantization=model.quantization, double_quant=model.double_quant, compute_bytes=compute,
        lora_r=lora.r, target_modules=targets, lora_dropout=lora.dropout, lora_bytes=4,
        micro_batch_size=t.micro_batch_size, seq_len=seq,
        gradient_checkpointing=t.gradient_checkpointing, optimizer=t.optimizer, method=stage.method,
        attn_implementation="eager" if model.attn_implementation == "eager" else "sdpa",
        loss_impl="fused", upcast_unquantized=model.quantization != "none", reference_adapter=reference_adapter,
        device="cuda" if on_gpu else "cpu")


@dataclass(frozen=True)
class MemoryContext:
    """What the memory check compares against."""

    snapshot: GpuSnapshot
    gpu: GpuInfo | None
    ram_available: int


def check_memory(label: str, shape: ModelShape, settings: Settings, stage: StageConfig,
                 ctx: MemoryContext) -> tuple[Check, Estimate, dict[str, Any] | None]:
    """Estimate vs free memory on the chosen GPU (or RAM on the CPU), with the ways out."""
    est = estimate_for_shape(shape, settings, _constants())
    t = stage.training
    if ctx.gpu is None:
        need = est.total_bytes + CPU_RUNTIME_BYTES
        msg = (f"needs about {gib(need)} of RAM on the CPU ({gib(est.total_bytes)} for training plus about "
               f"{gib(CPU_RUNTIME_BYTES)} for Python, torch and transformers); {gib(ctx.ram_available)} available")
        if need > ctx.ram_available:
            return Check(label, "fail", msg, _cpu_fix(settings)), est, None
        if need > ctx.ram_available * TIGHT:
            return Check(label, "warn", f"{msg}: less than 10% headroom", _cpu_fix(settings)), est, None
        return Check(label, "pass", msg), est, None
    gpu, need = ctx.gpu, est.total_bytes
    choice = fit_batch(shape, settings, t.gradient_accumulation_steps, gpu.free_bytes, constants=_constants())
    auto = choice.to_dict() if t.auto_fit else None
    where = f"GPU {gpu.index} has {gib(gpu.free_bytes)} free"
    held = [p for p in gpu.processes if p.used_bytes >= HELD_WORTH_NAMING]
    if held and not gpu.hypothetical:
        where += " because " + " and ".join(f"{p.name} holds {gib(p.used_bytes)}" for p in held)
    head = f"needs about {gib(need)} ({settings.micro_batch_size} x {settings.seq_len} tokens"
    head += ", gradient checkpointing" if settings.gradient_checkpointing else ", no gradient checkpointing"
    head += f"); {where}"
    if need <= gpu.free_bytes * TIGHT:
        return Check(label, "pass", head), est, auto
    if t.auto_fit and choice.fits:
        return Check(label, "pass", f"{head}; auto_fit: {choice.reason}"), est, auto
    fix = _memory_fix(shape, settings, stage, ctx, need, choice)
    if need <= gpu.free_bytes:
        return Check(label, "warn", f"{head}: less than 10% headroom", fix), est, auto
    return Check(label, "fail", head, fix), est, auto


def _constants() -> Any:
    from nova.preflight.calibration import CALIBRATED

    return CALIBRATED


def _memory_fix(shape: ModelShape, settings: Settings, stage: StageConfig, ctx: MemoryContext, need: int,
                choice: Any) -> str:
    """Every way out that would work, most direct first."""
    gpu = ctx.gpu
    assert gpu is not None
    t = stage.training
    ways = []
    for p in gpu.processes:
        if p.used_bytes >= HELD_WORTH_NAMING and gpu.free_bytes + p.used_bytes >= need:
            ways.append(f"stop {p.name} (pid {p.pid}, frees {gib(p.used_bytes)})")
    for other in ctx.snapshot.gpus:
        if other.index != gpu.index and other.free_bytes * TIGHT >= need:
            ways.append(f"use GPU {other.index} ({gib(other.free_bytes)} free; training.gpu: {other.index})")
    if choice.fits and choice.micro_batch_size != settings.micro_batch_size:
        ways.append(f"set micro_batch_size {settings.micro_batch_size} -> {choice.micro_batch_size} and "
                    f"gradient_accumulation_steps {t.gradient_accumulation_steps} -> "
                    f"{choice.gradient_accumulation_steps} (same effective batch {t.effective_batch_size})"
                    + (" with gradient checkpointing on" if choice.gradient_checkpointing and
                       not settings.gradient_checkpointing else ""))
    if not settings.gradient_checkpointing:
        ways.append("turn on gradient checkpointing (training.gradient_checkpointing: true)")
    if not t.auto_fit and choice.fits:
        ways.append("set training.auto_fit: true to let nova choose")
    if not ways:
        ways.append(f"nothing in this config fits {gib(gpu.free_bytes)}: {choice.reason}")
    return ", or ".join(ways)


def _cpu_fix(settings: Settings) -> str:
    return (f"shorten data.max_length ({settings.seq_len}) or micro_batch_size ({settings.micro_batch_size}), "
            "or train on a GPU")


# ---------------------------------------------------------------- model, template, data

WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.pt", "*.gguf")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "chat_template.jinja")


def check_model(source: ModelSource) -> Check:
    """The model is reachable: a directory with config.json (weights optional for preflight), a .gguf, a hub id."""
    if source.kind == "local" and source.path is not None:
        if not any(any(source.path.glob(g)) for g in WEIGHT_GLOBS):
            return Check("model", "warn", f"{source.message} has config.json but no weight files: enough for "
                         "preflight, not for training", "put the model's weights (*.safetensors) next to config.json")
        return Check("model", "pass", source.message)
    if source.kind in ("gguf", "hub_cached"):
        return Check("model", "pass", source.message)
    if source.kind == "hub_remote":
        return Check("model", "warn", f"{source.message}; it will be downloaded on the first run",
                     f"download it ahead: huggingface-cli download {source.base}")
    return Check("model", "fail", source.message,
                 "check model.base (a local directory with config.json, a .gguf file, or a hub id); for a hub id "
                 f"run 'huggingface-cli download {source.base}' while online")


def needs_chat_template(data: DataConfig) -> bool | None:
    """Whether the data is chat-shaped (so the tokenizer's template renders it); None if unknown."""
    answers = [_spec_needs_template(s) for s in [*data.datasets, *data.eval_datasets]]
    if any(a is True for a in answers):
        return True
    return None if any(a is None for a in answers) else False


def _spec_needs_template(spec: DatasetSpec) -> bool | None:
    if spec.format in ("messages", "sharegpt", "alpaca"):
        return True
    if spec.format == "text":
        return False
    record = first_record(Path(spec.path))
    if record is None:
        return None
    inverse = {field: name for name, field in spec.columns.items()}  # columns: nova name -> file field
    record = {inverse.get(k, k): v for k, v in record.items()}
    if {"messages", "conversations", "instruction"} & set(record):
        return True
    if "text" in record and len(record) == 1:
        return False
    return any(isinstance(v, list) and v and isinstance(v[0], dict) for v in record.values())


def first_record(path: Path) -> dict[str, Any] | None:
    """The first JSON record of a .jsonl/.json file (or of the first such file in a directory)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".json"))
        if not files:
            return None
        path = files[0]
    try:
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        data = json.loads(line)
                        return data if isinstance(data, dict) else None
        elif path.suffix == ".json" and path.stat().st_size < 50 * 1024**2:
            data = json.loads(path.read_text(encoding="utf-8"))
            item = data[0] if isinstance(data, list) and data else data
            return item if isinstance(item, dict) else None
    except (OSError, ValueError):
        return None
    return None


def check_chat_template(model: ModelConfig, source: ModelSource, stages: list[StageConfig]) -> Check:
    need = [needs_chat_template(s.data) for s in stages]
    if not any(n is True for n in need):
        if all(n is False for n in need):
            return Check("chat_template", "pass", "not needed (plain text data)")
        return Check("chat_template", "skip", "could not tell whether the data is chat-shaped")
    if model.chat_template:
        path = Path(model.chat_template).expanduser()
        if path.is_file():
            return Check("chat_template", "pass", f"model.chat_template {model.chat_template}")
        return Check("chat_template", "fail", f"model.chat_template {model.chat_template} does not exist",
                     "fix the path, or remove it to use the tokenizer's own template")
    if source.path is None:
        return Check("chat_template", "skip", f"cannot read the tokenizer of {source.base} yet ({source.kind})")
    if not any((source.path / f).is_file() for f in TOKENIZER_FILES):
        return Check("chat_template", "skip", f"no tokenizer files in {source.path}; the template is checked when "
                     "they are there")
    found = tokenizer_chat_template(source.path)
    if found:
        return Check("chat_template", "pass", f"the data is chat-shaped; the tokenizer has a template ({found})")
    return Check("chat_template", "fail", f"the data is chat-shaped but {source.path} has no chat template "
                 "(tokenizer_config.json, chat_template.jinja)",
                 "set model.chat_template to a Jinja file (e.g. ChatML), or use an instruct model")


def tokenizer_chat_template(directory: Path) -> str | None:
    for name in ("chat_template.jinja", "chat_template.json"):
        if (directory / name).is_file():
            return name
    try:
        cfg = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return "tokenizer_config.json" if isinstance(cfg, dict) and cfg.get("chat_template") else None


def check_data(label: str, stage: StageConfig) -> tuple[Check, int | None]:
    """nova.data's own validation, when it is installed; the record count feeds the schedule check."""
    if not stage.data.datasets:
        return Check(label, "fail", "data.datasets is empty", "add at least one training file under "
                     "data.datasets"), None
    try:
        from nova.data import check_data as data_check  # type: ignore[attr-defined]
    except ImportError:
        return Check(label, "skip", "nova.data.check_data is not available in this build"), None
    try:
        report = data_check(stage.data, method=stage.method)
    except ProblemList as exc:
        shown = "; ".join(p.render() for p in exc.problems[:3])
        more = f" (+{len(exc.problems) - 3} more)" if len(exc.problems) > 3 else ""
        return Check(label, "fail", f"{exc.title}: {shown}{more}",
                     "run 'nova data check' for the full list, or set data.on_error: skip"), None
    except NovaError as exc:
        return Check(label, "fail", exc.message, exc.hint or "run 'nova data check'"), None
    count = getattr(report, "train_records", None)
    count = count if isinstance(count, int) and count > 0 else None
    return Check(label, "pass", f"{count} training records" if count else "data is valid"), count


# ---------------------------------------------------------------- schedule, learning rate, disk

def check_learning_rate(label: str, stage: StageConfig) -> Check:
    """LoRA wants a larger LR than full fine-tuning: 5e-6 barely moves an adapter; DPO wants less."""
    lr = stage.training.learning_rate
    low, high = LR_RANGE[stage.method]
    if lr < low:
        return Check(label, "warn", f"learning_rate {lr:g} is low for LoRA {stage.method} (typical "
                     f"{low:g}..{high:g}); the adapter will barely learn",
                     f"raise training.learning_rate to about {2e-4 if stage.method == 'sft' else 5e-6:g}")
    if lr > high:
        return Check(label, "warn", f"learning_rate {lr:g} is high for LoRA {stage.method} (typical "
                     f"{low:g}..{high:g}); expect loss spikes or divergence",
                     f"lower training.learning_rate to about {2e-4 if stage.method == 'sft' else 5e-6:g}")
    return Check(label, "pass", f"learning_rate {lr:g} (typical {low:g}..{high:g})")


def check_schedule(label: str, stage: StageConfig, records: int | None) -> Check:
    """Epochs implied by steps x effective batch vs the data: too many overfit, too few undertrain."""
    t = stage.training
    if t.max_steps is None:
        epochs = t.num_epochs
        basis = f"num_epochs {epochs:g}"
    else:
        if not records:
            return Check(label, "skip", f"max_steps {t.max_steps}: cannot tell epochs without a record count")
        epochs = t.max_steps * t.effective_batch_size / records
        basis = f"{t.max_steps} steps x {t.effective_batch_size} sequences over {records} records"
    msg = f"{basis} = {epochs:.2f} epochs"
    if epochs > EPOCHS_HIGH:
        return Check(label, "warn", f"{msg}: likely to overfit (memorizes the data)",
                     f"lower training.max_steps/num_epochs to about {EPOCHS_HIGH:g} epochs or fewer, or add data")
    if epochs < EPOCHS_LOW:
        return Check(label, "warn", f"{msg}: under a third of the data is seen",
                     "raise training.max_steps (or use num_epochs: 1)")
    return Check(label, "pass", msg)


def count_records(data: DataConfig) -> int | None:
    """Training records from line counts (cheap; None when a source is not countable this way)."""
    total = 0
    for spec in data.datasets:
        n = _count_path(Path(spec.path))
        if n is None:
            return None
        total += min(n, spec.max_samples) if spec.max_samples else n
    if data.max_samples:
        total = min(total, data.max_samples)
    if not data.eval_datasets:
        total = int(total * (1 - data.eval_split))
    return total


def _count_path(path: Path) -> int | None:
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    total = 0
    for f in files:
        if f.suffix == ".jsonl" and f.stat().st_size < 512 * 1024**2:
            with f.open("rb") as fh:
                total += sum(1 for line in fh if line.strip())
        elif f.suffix == ".json" and f.stat().st_size < 64 * 1024**2:
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            total += len(data) if isinstance(data, list) else 1
        else:
            return None
    return total


def checkpoint_bytes(lora_params: int, optimizer: str) -> int:
    """One checkpoint: the fp32 adapter, the optimizer state (two moments) and small trainer files."""
    states = 2 if optimizer in ("adamw_8bit", "paged_adamw_8bit") else 8
    return lora_params * (4 + states) + 1024**2


def check_disk(run_dirs: list[tuple[Path, int]]) -> Check:
    """Free disk vs planned checkpoints: save_total_limit checkpoints plus the final adapter, per phase."""
    need = sum(b for _, b in run_dirs)
    where = _existing_parent(run_dirs[0][0]) if run_dirs else Path(".")
    free = shutil.disk_usage(where).free
    msg = f"checkpoints need about {gib(need)}; {gib(free)} free on {where}"
    if need > free:
        return Check("disk", "fail", msg, "free disk space, lower training.save_total_limit, or set output_dir "
                     "on a larger disk")
    if need > free * TIGHT:
        return Check("disk", "warn", msg, "lower training.save_total_limit or free disk space")
    return Check("disk", "pass", msg)


def _existing_parent(path: Path) -> Path:
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
