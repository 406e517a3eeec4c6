"""Write a merged Hugging Face model as a GGUF file that llama.cpp and Ollama can run.

This follows llama.cpp's ``convert_hf_to_gguf.py`` for the architectures nova trains, so the file
looks like one llama.cpp made itself:

- llama and mistral are written as GGUF architecture ``llama``; their q/k projections are permuted
  into llama.cpp's rotary layout (transformers' GGUF loader applies the inverse, so a round trip
  is exact); qwen2 (q/k/v biases) and qwen3 (q/k norms) keep their own names, unpermuted.
- 1-D tensors (norms, biases) stay F32; 2-D weights become F16, Q8_0 or F32 (``outtype``). A Q8_0
  tensor whose rows are not a multiple of 32 falls back to F16, as llama.cpp does. The llama.cpp
  presets q4_0, q4_k_m, q5_k_m and q6_k mix types per tensor as ``llama-quantize`` does, with
  llama.cpp's own quantizer (``nova.export.gguf_quant``, needs the optional xllamacpp package).
- Tied embeddings: no ``output.weight`` tensor; llama.cpp then reuses ``token_embd``.
- Tokenizer: byte-level BPE or SentencePiece-style BPE with its merges, special ids and chat
  template, written by ``nova.export.gguf_vocab``.

The file is written under a temporary name beside the output and renamed into place at the end
(``nova.files``), so an interrupted export never leaves a truncated ``.gguf`` behind.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nova.errors import NovaError
from nova.export.gguf_quant import FILE_TYPES, PRESETS, preset_type, quantizer
from nova.export.gguf_vocab import write_tokenizer
from nova.files import clean_stale_siblings, replace_path, temp_sibling
from nova.lazy import require

OUTTYPES = ("f16", "q8_0", "f32", *PRESETS)
# Provenance of an export directory: what it was made from; ``--force`` replaces only a directory holding it.
EXPORT_INFO = "nova_export.json"


@dataclass(frozen=True)
class ArchSpec:
    """How one Hugging Face ``model_type`` maps onto a llama.cpp architecture."""

    gguf_arch: str
    permute_qk: bool


ARCHS: dict[str, ArchSpec] = {
    "llama": ArchSpec("llama", permute_qk=True),
    "mistral": ArchSpec("llama", permute_qk=True),
    "qwen2": ArchSpec("qwen2", permute_qk=False),
    "qwen3": ArchSpec("qwen3", permute_qk=False),
}


@dataclass
class ExportResult:
    """What an export wrote, for the CLI to print."""

    path: Path
    size_bytes: int
    notes: list[str] = field(default_factory=list)
    tensor_types: dict[str, int] = field(default_factory=dict)
    parity: Any = None  # nova.export.parity.Parity: what the check measured (or why it was skipped)
    warnings: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)  # what was written, when it is more than ``path``


# ---------------------------------------------------------------------------------------------
# Config and hyperparameters
# ---------------------------------------------------------------------------------------------


def rope_settings(config: Any) -> tuple[float, dict[str, Any]]:
    """(rope theta, rope scaling dict) for transformers 5 (``rope_parameters``) and 4 configs."""
    params = getattr(config, "rope_parameters", None) or {}
    scaling = dict(getattr(config, "rope_scaling", None) or {})
    if isinstance(params, dict) and params:
        scaling = {**scaling, **{k: v for k, v in params.items() if k != "rope_theta"}}
    theta = params.get("rope_theta") if isinstance(params, dict) else None
    if theta is None:
        theta = getattr(config, "rope_theta", 10000.0)
    return float(theta), scaling


def check_supported(config: Any) -> ArchSpec:
    """The ArchSpec for this config, or NovaError naming what is supported."""
    model_type = getattr(config, "model_type", None)
    spec = ARCHS.get(str(model_type))
    if spec is None:
        raise NovaError(f"GGUF export does not support model type '{model_type}'",
                        hint=f"supported: {', '.join(sorted(ARCHS))}")
    _, scaling = rope_settings(config)
    rope_type = scaling.get("rope_type", scaling.get("type", "default")) or "default"
    if rope_type not in ("default", "linear", "llama3"):
        raise NovaError(f"GGUF export does not support rope scaling '{rope_type}' yet",
                        hint="supported: default, linear, llama3")
    return spec


def head_dim(config: Any) -> int:
    """Per-head dimension, explicit in newer configs, else hidden / heads."""
    explicit = getattr(config, "head_dim", None)
    return int(explicit) if explicit else config.hidden_size // config.num_attention_heads


def write_hparams(writer: Any, config: Any, spec: ArchSpec, name: str, file_type: int) -> None:
    """The ``general.*`` and ``<arch>.*`` metadata llama.cpp reads to build the graph."""
    gguf = require("gguf")
    n_kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    theta, scaling = rope_settings(config)
    writer.add_type("model")
    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(theta)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    dim = head_dim(config)
    writer.add_rope_dimension_count(dim)
    if dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(dim)
        writer.add_value_length(dim)
    rope_type = scaling.get("rope_type", scaling.get("type", "default")) or "default"
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))


def llama3_rope_factors(config: Any) -> Any:
    """The ``rope_freqs`` tensor llama.cpp needs for Llama 3.1+ rope scaling (as convert_hf_to_gguf)."""
    np = require("numpy")
    theta, scaling = rope_settings(config)
    dim = head_dim(config)
    freqs = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = float(scaling.get("factor", 8.0))
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / float(freq)
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Tensors
# ---------------------------------------------------------------------------------------------


def permute_qk(weights: Any, n_head: int, n_head_kv: int | None = None) -> Any:
    """llama.cpp's permutation of q/k rows (convert_hf_to_gguf ``LlamaModel.permute``).

    HF llama rotates halves of each head (``rotate_half``); llama.cpp's rope rotates adjacent
    pairs, so rows are interleaved per head. transformers' GGUF loader applies the exact inverse.
    """
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    shape = weights.shape
    return weights.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def choose_type(shape: tuple[int, ...], outtype: str, name: str = "", n_layer: int = 0, tied: bool = False) -> Any:
    """The GGML type for one tensor: 1-D stays F32, 2-D follows ``outtype`` (a preset: per tensor name)."""
    gguf = require("gguf")
    qt = gguf.GGMLQuantizationType
    if len(shape) <= 1 or outtype == "f32":
        return qt.F32
    if outtype == "f16":
        return qt.F16
    if outtype in PRESETS:
        return qt[preset_type(name, shape[-1], outtype, n_layer, tied)]
    block = gguf.GGML_QUANT_SIZES[qt.Q8_0][0]
    return qt.Q8_0 if shape[-1] % block == 0 else qt.F16


def gguf_tensor_name(hf_name: str, name_map: Any) -> str | None:
    """llama.cpp's name for an HF parameter name (``model.layers.0.self_attn.q_proj.weight``)."""
    base, suffix = hf_name, ""
    if hf_name.endswith((".weight", ".bias")):
        base, suffix = hf_name.rsplit(".", 1)
        suffix = "." + suffix
    mapped = name_map.get_name(base)
    return None if mapped is None else mapped + suffix


@dataclass
class PlannedTensor:
    """One tensor of the output: where its data comes from and how it is stored."""

    name: str
    shape: tuple[int, ...]
    qtype: Any
    source: Callable[[], Any]  # returns the float32 numpy array, already permuted


def plan_tensors(model: Any, spec: ArchSpec, outtype: str) -> list[PlannedTensor]:
    """Every output tensor with its llama.cpp name and type, without touching the data yet.

    The data is produced one tensor at a time while writing, so peak memory is the model plus one
    tensor, not the model plus the whole output file.
    """
    gguf = require("gguf")
    config = model.config
    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == spec.gguf_arch)
    name_map = gguf.get_tensor_name_map(arch_enum, config.num_hidden_layers)
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    tied = bool(getattr(config, "tie_word_embeddings", False))
    plan: list[PlannedTensor] = []
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name.endswith("lm_head.weight"):
            continue
        name = gguf_tensor_name(hf_name, name_map)
        if name is None:
            raise NovaError(f"GGUF export: no llama.cpp name for tensor '{hf_name}'",
                            hint=f"the model has weights that a {spec.gguf_arch} GGUF cannot hold")
        heads = None
        if spec.permute_qk and re.search(r"\.attn_q\.(weight|bias)$", name):
            heads = (n_head, n_head)
        elif spec.permute_qk and re.search(r"\.attn_k\.(weight|bias)$", name):
            heads = (n_head, n_kv)
        shape = tuple(int(d) for d in tensor.shape)
        qtype = choose_type(shape, outtype, name, config.num_hidden_layers, tied)
        plan.append(PlannedTensor(name, shape, qtype, _source(tensor, heads)))
    _, scaling = rope_settings(config)
    if (scaling.get("rope_type") or scaling.get("type")) == "llama3":
        factors = llama3_rope_factors(config)
        plan.append(PlannedTensor("rope_freqs.weight", factors.shape, gguf.GGMLQuantizationType.F32,
                                  lambda: factors))
    return plan


def _source(tensor: Any, heads: tuple[int, int] | None) -> Callable[[], Any]:
    def load() -> Any:
        array = tensor.detach().to("cpu").float().numpy()
        return permute_qk(array, *heads) if heads else array

    return load


def _stored_bytes(item: PlannedTensor) -> tuple[tuple[int, ...], Any, int]:
    """(shape as given to the writer, numpy dtype, byte count) of a planned tensor."""
    gguf = require("gguf")
    np = require("numpy")
    qt = gguf.GGMLQuantizationType
    count = math.prod(item.shape)
    if item.qtype == qt.F32:
        return item.shape, np.dtype(np.float32), count * 4
    if item.qtype == qt.F16:
        return item.shape, np.dtype(np.float16), count * 2
    byte_shape = gguf.quants.quant_shape_to_byte_shape(item.shape, item.qtype)
    return byte_shape, np.dtype(np.uint8), math.prod(byte_shape)


def write_gguf(path: Path, model: Any, tok: Any, spec: ArchSpec, outtype: str, name: str,
               notes: list[str]) -> dict[str, int]:
    """Write the whole file, streaming tensor data; returns a count of tensors per GGML type."""
    gguf = require("gguf")
    np = require("numpy")
    plan = plan_tensors(model, spec, outtype)
    writer = gguf.GGUFWriter(str(path), spec.gguf_arch)
    try:
        write_hparams(writer, model.config, spec, name, _file_type(outtype))
        write_tokenizer(writer, tok, model.config.vocab_size, notes)
        counts: dict[str, int] = {}
        for item in plan:
            shape, dtype, nbytes = _stored_bytes(item)
            raw = None if item.qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) \
                else item.qtype
            writer.add_tensor_info(item.name, shape, dtype, nbytes, raw_dtype=raw)
            counts[item.qtype.name] = counts.get(item.qtype.name, 0) + 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for item in plan:
            writer.write_tensor_data(_quantize(np.ascontiguousarray(item.source()), item.qtype, outtype))
    finally:
        writer.close()
    return counts


def _quantize(data: Any, qtype: Any, outtype: str) -> Any:
    """Tensor bytes: float types and q8_0 by the gguf package, the presets' types by llama.cpp itself."""
    gguf = require("gguf")
    if outtype in PRESETS and qtype not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        return quantizer(outtype).quantize(data, qtype)
    return gguf.quants.quantize(data, qtype)


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def _file_type(outtype: str) -> int:
    gguf = require("gguf")
    ft = gguf.LlamaFileType
    if outtype in PRESETS:
        return int(ft[FILE_TYPES[outtype]])
    return {"f32": ft.ALL_F32, "f16": ft.MOSTLY_F16, "q8_0": ft.MOSTLY_Q8_0}[outtype]


def _type_notes(outtype: str, counts: dict[str, int]) -> list[str]:
    """Say where llama.cpp's rules fell back to another type (rows not whole blocks of the preset's type)."""
    if outtype == "q8_0" and counts.get("F16"):
        return [f"{counts['F16']} tensors with rows not a multiple of 32 were written as F16"]
    if outtype not in PRESETS:
        return []
    odd = {k: n for k, n in counts.items() if k in ("Q5_0", "Q5_1", "Q8_0", "F16")}
    if outtype == "q4_0":
        odd.pop("Q8_0", None)
    if not odd:
        return []
    shown = ", ".join(f"{n} {k}" for k, n in sorted(odd.items()))
    return [f"{outtype}: rows that are not whole blocks of the preset's type fell back as llama.cpp does ({shown})"]


def check_merged_dir(model_dir: Path) -> None:
    """Refuse a missing directory, a LoRA adapter directory, or anything without config.json."""
    # Imported here: nova.runs loads the config schema, and nova.cli reads OUTTYPES from this module.
    from nova.runs.layout import has_adapter

    if not model_dir.is_dir():
        raise NovaError(f"model directory not found: {model_dir}", hint="pass the directory written by 'nova merge'")
    if has_adapter(model_dir) and not (model_dir / "config.json").exists():
        raise NovaError(f"{model_dir} holds a LoRA adapter, not a merged model",
                        hint="run 'nova merge' first and export its output")
    if not (model_dir / "config.json").exists():
        raise NovaError(f"not a model directory (no config.json): {model_dir}",
                        hint="pass the directory written by 'nova merge' (or any Hugging Face model dir)")


def load_merged(model_dir: Path) -> tuple[Any, Any]:
    """(model, tokenizer) from a merged model directory, in its saved dtype, on the CPU."""
    from nova.model.gguf import quiet_progress

    check_merged_dir(model_dir)
    transformers = require("transformers")
    try:
        with quiet_progress():
            tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
            model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="auto")
    except Exception as exc:
        raise NovaError(f"cannot load the model in {model_dir}: {type(exc).__name__}: {exc}") from exc
    if getattr(model.config, "quantization_config", None) is not None:
        raise NovaError(f"{model_dir} is a quantized checkpoint; export a merged full-precision model",
                        hint="merge the adapter into an unquantized base first")
    return model, tok


def export_gguf(model_dir: str | Path, out_file: str | Path, *, outtype: str = "f16",
                force: bool = False, verify: Callable[[Path, Any, Any], Any] | None = None) -> ExportResult:
    """Write ``model_dir`` (a merged HF model) to ``out_file`` as GGUF and return what was written.

    The file is written next to ``out_file`` under a temporary name and renamed at the end; an
    existing ``out_file`` is replaced only with ``force``. ``verify(written file, model, tokenizer)``
    runs before the rename (the parity check: nova.export.model_export); what it returns is the
    result's ``parity``, and when it raises nothing is kept.
    """
    if outtype not in OUTTYPES:
        raise NovaError(f"unknown GGUF outtype '{outtype}'", hint=f"use one of: {', '.join(OUTTYPES)}")
    src = Path(model_dir).expanduser()
    out = Path(out_file).expanduser()
    if out.is_dir():
        raise NovaError(f"output is a directory: {out}", hint="--out names the .gguf file to write")
    if out.exists() and not force:
        raise NovaError(f"output exists: {out}", hint="choose another --out, or pass --force to replace it")
    require("gguf")  # the install hint before minutes of loading, not after
    if outtype in PRESETS:
        quantizer(outtype)
    check_merged_dir(src)
    try:
        check_supported(require("transformers").AutoConfig.from_pretrained(str(src)))
    except NovaError:
        raise
    except Exception as exc:
        raise NovaError(f"cannot read {src / 'config.json'}: {type(exc).__name__}: {exc}") from exc
    model, tok = load_merged(src)
    spec = check_supported(model.config)
    notes: list[str] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_siblings(out)  # what a killed export left beside it
    tmp = temp_sibling(out)
    parity = None
    try:
        counts = write_gguf(tmp, model, tok, spec, outtype, src.resolve().name, notes)
        if verify is not None:
            parity = verify(tmp, model, tok)
        replace_path(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    notes += _type_notes(outtype, counts)
    return ExportResult(path=out, size_bytes=out.stat().st_size, notes=notes, tensor_types=counts, parity=parity)
