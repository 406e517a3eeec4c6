"""Load the tokenizer and the base model the way nova trains it.

Device and dtype choices live here so training, merge and infer agree on them:
- the device: a CUDA GPU, else Apple Silicon's GPU (``mps``), else the CPU;
- compute dtype ``auto``: bf16 on GPUs that support it, fp16 on older GPUs; on ``mps`` bf16 from
  macOS 14 (where torch runs it) and fp32 before (fp16 would need loss scaling torch does not
  do for mps); on a CPU, bf16 when it has native bf16 instructions (AVX512-BF16 or AMX) and
  fp32 otherwise, chosen from the measurements in docs/benchmarks.md;
- 4-bit nf4 with double quantization through bitsandbytes unless ``quantization: none``; on
  ``mps`` only where the installed bitsandbytes has a backend for it (``mps_quantization_problem``).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nova.config.schema import ModelConfig
from nova.errors import NovaError
from nova.files import looks_like_local_path
from nova.lazy import require

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Placement:
    """Where and in what precision the model runs."""

    device: str  # "cuda", "mps" or "cpu"
    compute_dtype: torch.dtype
    gpu_index: int = 0

    @property
    def dtype_name(self) -> str:
        return str(self.compute_dtype).replace("torch.", "")

    @property
    def torch_device(self) -> str:
        """The device as torch names it: ``cuda:0``, ``mps`` or ``cpu``."""
        return f"cuda:{self.gpu_index}" if self.device == "cuda" else self.device


CPU_BF16_ENV = "NOVA_CPU_BF16"  # 1 or 0: answer cpu_has_native_bf16 without asking the CPU


def cpu_has_native_bf16(flags: bool | None = None) -> bool:
    """True when the CPU advertises bf16 instructions (AVX512-BF16 or AMX; nova.system knows where);
    ``flags``: whether they were found, when the caller read them already (preflight).

    ``NOVA_CPU_BF16=1`` (or 0) overrides the answer, so a CPU of one kind can run what ``compute_dtype:
    auto`` does on the other (bf16 is emulated, slowly, where it is not native): how the test suite is
    checked on both kinds from one machine (docs/benchmarks.md).
    """
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if flags is not None:
        return flags
    from nova.system import cpu_description

    return bool(cpu_description()[1])


def dtype_for(setting: str, device: str, bf16_ok: bool) -> str:
    """``model.compute_dtype`` resolved for a device ('cuda', 'mps' or 'cpu') that does or does not run bf16
    natively: 'bf16', 'fp16' or 'fp32'. Training (``choose_placement``) and preflight both ask it."""
    if setting != "auto":
        return setting
    if bf16_ok:
        return "bf16"
    return "fp16" if device == "cuda" else "fp32"  # mps: fp16 would need loss scaling torch does not do there


def mps_quantization_problem(quantization: str) -> tuple[str, str] | None:
    """Why ``model.quantization`` cannot run on Apple's GPU (mps), with the fix; None when it can.

    Read from bitsandbytes' files, without importing it (preflight asks too): 4-bit runs on mps
    only through a bitsandbytes that ships an ``mps`` backend; 8-bit has none.
    """
    if quantization == "none":
        return None
    fix = ("set model.quantization: none (LoRA on the bf16 model: nova preflight says whether it fits the "
           "unified memory), or choose a smaller model")
    if quantization == "int8":
        return "model.quantization int8 has no kernels for Apple's GPU (mps) in bitsandbytes", fix
    spec = importlib.util.find_spec("bitsandbytes")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not any((Path(loc) / "backends" / "mps").is_dir() for loc in locations):
        where = "is not installed" if spec is None else "has no backend for Apple's GPU (mps)"
        return f"model.quantization {quantization} needs bitsandbytes' kernels, and bitsandbytes {where}", fix
    return None


def pick_gpu(wanted: str | int = "auto") -> int:
    """The GPU to use: an explicit index, or ('auto') the one with the most free memory right now."""
    torch = require("torch")
    count = torch.cuda.device_count()
    if isinstance(wanted, int):
        if not 0 <= wanted < count:
            raise NovaError(f"training.gpu is {wanted} but this machine has {count} GPU(s)",
                            hint=f"use 0..{count - 1} or 'auto'")
        return wanted
    return max(range(count), key=lambda i: torch.cuda.mem_get_info(i)[0])


def choose_placement(setting: str, gpu: str | int = "auto") -> Placement:
    """Resolve ``model.compute_dtype`` (and the GPU) for the hardware at hand."""
    torch = require("torch")
    on_gpu = torch.cuda.is_available()
    names = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if not on_gpu and _mps_available(torch):
        return _mps_placement(torch, setting, names)
    if not on_gpu:  # auto, measured: docs/benchmarks.md (bf16 ~1.6x fp32 with AVX512-BF16, ~25x slower without)
        return Placement("cpu", names[dtype_for(setting, "cpu", setting == "auto" and cpu_has_native_bf16())])
    index = pick_gpu(gpu)
    torch.cuda.set_device(index)
    bf16_ok = torch.cuda.is_bf16_supported()
    if setting == "bf16" and not bf16_ok:
        raise NovaError("model.compute_dtype is bf16 but this GPU does not support bf16",
                        hint="set model.compute_dtype: fp16 or auto")
    return Placement("cuda", names[dtype_for(setting, "cuda", bf16_ok)], index)


def _mps_available(torch: Any) -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _mps_placement(torch: Any, setting: str, names: dict[str, Any]) -> Placement:
    """Apple Silicon's GPU: bf16 where torch runs it on mps (macOS 14+), else fp32."""
    check = getattr(torch.backends.mps, "is_macos_or_newer", None)
    bf16_ok = bool(check(14, 0)) if check is not None else False
    if setting == "bf16" and not bf16_ok:
        raise NovaError("model.compute_dtype is bf16 but torch runs bf16 on Apple's GPU (mps) only from macOS 14",
                        hint="set model.compute_dtype: auto (fp32 here), or update macOS")
    return Placement("mps", names[dtype_for(setting, "mps", bf16_ok)])


def resolve_base(model_cfg: ModelConfig) -> str:
    """A path or hub id transformers can load: a .gguf base is imported once into models_dir."""
    base = model_cfg.base
    if base.lower().endswith(".gguf"):
        from nova.model.gguf import ensure_hf_model

        return str(ensure_hf_model(base, model_cfg.models_dir))
    path = Path(base).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise NovaError(f"model.base '{base}' is a directory without config.json",
                            hint="point it at a Hugging Face model directory or a .gguf file")
        return str(path)
    if looks_like_local_path(base):
        raise NovaError(f"model.base '{base}' does not exist", hint="check the path, or run scripts/setup.sh")
    return base


def _offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE",
                                                                                "TRANSFORMERS_OFFLINE"))


def _hub_kwargs(model_cfg: ModelConfig, source: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"trust_remote_code": model_cfg.trust_remote_code}
    if Path(source).exists() or _offline():  # a hub id offline: only the local cache can answer
        kwargs["local_files_only"] = True
    if model_cfg.revision and not Path(source).exists():
        kwargs["revision"] = model_cfg.revision
    return kwargs


def load_tokenizer(model_cfg: ModelConfig, source: str | None = None) -> Any:
    """Load the tokenizer, apply a chat-template override, and make sure a pad token exists.

    A missing pad token becomes eos. Pad equal to eos is fine for nova: labels are built
    from the chat template before padding and the collator pads labels with -100, so the eos
    that ends each assistant turn is still learned (tests check this).
    """
    transformers = require("transformers")
    source = source or resolve_base(model_cfg)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, **_hub_kwargs(model_cfg, source))
    except (OSError, ValueError) as exc:
        raise NovaError(f"cannot load the tokenizer of '{source}': {str(exc).splitlines()[0]}",
                        hint="check model.base; offline, a hub id must already be in the local cache") from None
    if model_cfg.chat_template:
        template_path = Path(model_cfg.chat_template).expanduser()
        try:
            tokenizer.chat_template = template_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise NovaError(f"cannot read model.chat_template {template_path}: {exc}") from None
    check_template_syntax(tokenizer.chat_template, f"model.chat_template {model_cfg.chat_template}"
                          if model_cfg.chat_template else f"the chat template of {source}")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def check_template_syntax(template: Any, where: str) -> None:
    """A chat template that does not parse is one line naming its line and the fix, when the tokenizer loads
    (not an internal error at the first record or prompt). Parsed only: nothing of it runs here."""
    templates = template.values() if isinstance(template, dict) else [template]
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment()
    for text in templates:
        if not isinstance(text, str):
            continue
        try:
            env.parse(text)
        except TemplateSyntaxError as exc:
            raise NovaError(f"{where} does not parse (line {exc.lineno}: {exc.message})",
                            hint="fix the template (model.chat_template names a file of your own to use "
                                 "instead)") from None


def tokenizer_for_check(model_cfg: ModelConfig) -> tuple[Any | None, str | None]:
    """The tokenizer for a data check, or (None, why not): never imports a GGUF or needs weights.

    A data check must not need the model weights, a GPU, or the network; when the tokenizer is
    not at hand the caller gives the record-level report instead.
    """
    source = model_cfg.base
    if source.lower().endswith(".gguf"):
        from nova.model.gguf import default_import_dir

        imported = default_import_dir(source, model_cfg.models_dir)
        if not (imported / "tokenizer_config.json").exists():
            return None, (f"the base is a .gguf file not imported yet (no {imported}); run 'nova models "
                          "import-gguf' for the token view")
        source = str(imported)
    try:
        return load_tokenizer(model_cfg, source), None
    except NovaError as exc:
        return None, exc.message


def quantization_config(model_cfg: ModelConfig, compute_dtype: torch.dtype, *, shard: bool = False) -> Any | None:
    """The bitsandbytes config for ``model.quantization`` (None for plain LoRA).

    ``shard`` (FSDP): the 4-bit weights are stored in the compute dtype, so FSDP can flatten and
    shard them with the rest of the layer (FSDP-QLoRA).
    """
    if model_cfg.quantization == "none":
        return None
    require("bitsandbytes")
    transformers = require("transformers")
    if model_cfg.quantization == "int8":
        return transformers.BitsAndBytesConfig(load_in_8bit=True)
    return transformers.BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=model_cfg.quantization,
        bnb_4bit_use_double_quant=model_cfg.double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        **({"bnb_4bit_quant_storage": compute_dtype} if shard else {}),
    )


def load_base_model(model_cfg: ModelConfig, placement: Placement, source: str | None = None,
                    *, quantize: bool = True, shard: bool = False, weights_dtype: Any = None) -> Any:
    """Load the base model, quantized as configured (``quantize=False`` loads full precision for merge).

    Each rank of a DDP run loads a full replica onto its own GPU (``placement.gpu_index`` is its
    local rank); ``shard`` (FSDP) leaves placement to FSDP's loading. ``weights_dtype`` stores the
    unquantized weights in another dtype than the compute dtype (full fine-tuning's fp32 master
    weights, computed under autocast).
    """
    transformers = require("transformers")
    source = source or resolve_base(model_cfg)
    kwargs = _hub_kwargs(model_cfg, source)
    kwargs["dtype"] = weights_dtype or placement.compute_dtype
    if model_cfg.attn_implementation != "auto":
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    if quantize and placement.device == "mps" and (problem := mps_quantization_problem(model_cfg.quantization)):
        raise NovaError(problem[0], hint=problem[1])
    qconfig = quantization_config(model_cfg, placement.compute_dtype, shard=shard) if quantize else None
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        if not shard:
            kwargs["device_map"] = {"": placement.gpu_index} if placement.device == "cuda" else {"": placement.device}
    if Path(source).is_dir():  # damaged or mismatched files: one line before transformers meets them
        from nova.model.weights_check import check_model_dir

        check_model_dir(Path(source), trust_remote_code=model_cfg.trust_remote_code)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise NovaError(f"cannot load model '{source}': {str(exc).splitlines()[0]}",
                        hint="check model.base; offline, a hub id must already be in the local cache") from None
    except (RuntimeError, ValueError) as exc:
        if "mismatched" not in str(exc) and "size mismatch" not in str(exc):
            raise
        raise NovaError(f"the weights of '{source}' do not have the shapes its config.json describes",
                        hint="config.json looks edited or belongs to another model; restore the one that came "
                             "with the weights") from None
    if qconfig is None and placement.device != "cpu":
        model = model.to(placement.torch_device)
    if qconfig is not None and placement.device == "cpu":
        keep_cpu_4bit_differentiable(model)
    return model


def keep_cpu_4bit_differentiable(model: Any) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference; returns how many layers.

    On CPUs with AVX512-BF16, bitsandbytes (0.50) repacks a Linear4bit's weight the first time
    it runs in eval mode without grad (e.g. an evaluation pass) and from then on uses a kernel
    with no autograd support, also in training. Gradients then stop flowing through the frozen
    base layers and every adapter below the last one learns from a wrong signal, silently
    (torch only warns "an autograd kernel was not registered"). Training evaluates every
    ``eval_steps``, so nova turns the repacking off. tests/model/test_model.py checks the gradients.
    """
    count = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def gpu_name(placement: Any) -> str | None:
    """The GPU's name as NVML gives it (preflight names GPUs the same way), for the calibration's key."""
    if placement.device != "cuda":
        return None
    from nova.lazy import require

    return str(require("torch").cuda.get_device_name(placement.gpu_index))
