"""Damaged or mismatched model files, found from their headers before any weight loads: one clear line each.

Read here, cheaply (headers only, never the tensors): each safetensors file's header and size (a file cut
off by a failed copy, or one longer than its header says, fails inside safetensors with "incomplete
metadata"), the shapes config.json describes against the shapes stored (an edited hidden_size or
vocab_size fails deep inside transformers), a config.json whose sizes describe a model far larger
than its weights (preflight would otherwise size a run for 1e11 GiB), an ``auto_map`` naming code
for an architecture transformers does not know, and an adapter whose rank is absurd or disagrees with
its tensors. Used by model loading (training, infer, merge, export) and by preflight.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from nova.errors import NovaError

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
MAX_RANK = 4096  # a LoRA rank above this is no adapter anyone trains; PEFT would allocate it before failing
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1}
OVERSIZED = 4.0  # config.json may describe at most this many times the parameters the weights hold
REFETCH = "the file is damaged: copy or download the model again"


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, checked against the file's size; NovaError when damaged."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise NovaError(f"{path} is cut off: {size} bytes, too short for a safetensors header", hint=REFETCH)
        length = struct.unpack("<Q", head)[0]
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise NovaError(f"{path} is damaged: its header claims {length} bytes, the file holds {size}",
                            hint=REFETCH)
        try:
            header = json.loads(fh.read(length))
        except ValueError:
            raise NovaError(f"{path} is damaged: its header is not valid JSON", hint=REFETCH) from None
    if not isinstance(header, dict):
        raise NovaError(f"{path} is damaged: its header is not a JSON object", hint=REFETCH)
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise NovaError(f"{path} is damaged: tensor {name} has no valid data_offsets", hint=REFETCH)
        end = max(end, offsets[1])
    expected = 8 + length + end
    if size < expected:
        raise NovaError(f"{path} is cut off: {size} of the {expected} bytes its header describes", hint=REFETCH)
    if size > expected:
        raise NovaError(f"{path} is damaged: {size - expected} bytes past the last tensor its header describes "
                        f"({size} bytes, {expected} expected)", hint=REFETCH)
    return header


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files a model directory loads (its index's files, else model*.safetensors)."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
        except (OSError, ValueError, AttributeError):
            raise NovaError(f"{index} is not valid JSON", hint=REFETCH) from None
        missing = sorted(n for n in names if not (directory / n).is_file())
        if missing:
            raise NovaError(f"{directory}: {len(missing)} weight file(s) named in its index are missing: "
                            f"{', '.join(missing[:3])}", hint="copy or download the model again (it is incomplete)")
        return [directory / n for n in sorted(names)]
    return sorted(directory.glob("*.safetensors"))


def _shapes(files: list[Path]) -> dict[str, tuple[list[int], int]]:
    """Each stored tensor's shape and size in bytes, from the headers."""
    out: dict[str, tuple[list[int], int]] = {}
    for path in files:
        for name, info in read_header(path).items():
            if name != "__metadata__" and isinstance(info, dict) and isinstance(info.get("shape"), list):
                start, end = info["data_offsets"]
                out[name] = ([int(d) for d in info["shape"] if isinstance(d, int)], end - start)
    return out


def _count(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _described_parameters(config: dict[str, Any]) -> int | None:
    """Roughly the parameters a decoder config describes: embeddings plus per layer attention and MLP."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    sizes = [text.get(k) for k in ("hidden_size", "num_hidden_layers", "vocab_size")]
    if not all(isinstance(v, int) and v > 0 for v in sizes):
        return None
    hidden, layers, vocab = sizes
    inter = text.get("intermediate_size") if isinstance(text.get("intermediate_size"), int) else 4 * hidden
    experts = text.get("num_local_experts") or text.get("num_experts") or 1
    experts = experts if isinstance(experts, int) and experts > 0 else 1
    return vocab * hidden + layers * (2 * hidden * hidden + 3 * hidden * inter * experts)


def config_problem(config: dict[str, Any], stored: dict[str, tuple[list[int], int]]) -> str | None:
    """What in config.json disagrees with the stored weights (shapes and bytes from their headers), or None."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    vocab, hidden = text.get("vocab_size"), text.get("hidden_size")
    embed = next((s for n, (s, _) in stored.items() if n.endswith(("embed_tokens.weight", "wte.weight"))), None)
    if embed is not None and len(embed) == 2 and isinstance(vocab, int) and isinstance(hidden, int) \
            and embed != [vocab, hidden]:
        return (f"config.json describes embeddings of {vocab} x {hidden} (vocab_size x hidden_size); the weights "
                f"store {embed[0]} x {embed[1]}")
    described, stored_bytes = _described_parameters(config), sum(b for _, b in stored.values())
    # packed 4-bit weights hold two parameters a byte: more than OVERSIZED times that is not these weights
    if described is not None and stored_bytes > 0 and described > OVERSIZED * 2 * stored_bytes:
        return (f"config.json describes about {described:.3g} parameters; the weights hold {stored_bytes:.3g} "
                "bytes: its sizes (hidden_size, intermediate_size, num_hidden_layers, vocab_size) look wrong")
    return None


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise NovaError(f"cannot read {path}: {exc}", hint="restore the model's config.json") from None
    if not isinstance(config, dict):
        raise NovaError(f"{path} is not a JSON object", hint="restore the model's config.json")
    return config


def check_model_dir(directory: Path, *, trust_remote_code: bool = False) -> None:
    """Raise a NovaError naming the first problem of a local model directory's config and weights.
    ``trust_remote_code``: a model with its own code (auto_map) may name an architecture transformers lacks."""
    directory = Path(directory)
    config = _read_config(directory)
    unknown = unknown_architecture(config)
    if unknown is not None and not (trust_remote_code and config.get("auto_map")):
        raise NovaError(f"{directory}: {unknown}", hint="use a model of an architecture transformers knows; nova "
                        "runs a model's own code only with model.trust_remote_code: true")
    problem = config_problem(config, _shapes(weight_files(directory)))
    if problem is not None:
        raise NovaError(f"{directory}: {problem}", hint="config.json looks edited or belongs to another model; "
                        "restore the one that came with the weights")


def unknown_architecture(config: dict[str, Any]) -> str | None:
    """A ``model_type`` transformers does not know (with ``auto_map``: the model ships its own code)."""
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        return "config.json names no model_type"
    from nova.lazy import require

    mapping = require("transformers").models.auto.configuration_auto.CONFIG_MAPPING_NAMES
    if model_type in mapping:
        return None
    code = " and asks to run its own code (auto_map)" if config.get("auto_map") else ""
    return f"model_type '{model_type}' is not an architecture transformers knows{code}"


def check_adapter(directory: Path) -> None:
    """Raise a NovaError when an adapter's rank is absurd or disagrees with its stored tensors."""
    directory = Path(directory)
    path = directory / "adapter_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise NovaError(f"cannot read {path}: {exc}", hint="save or copy the adapter again") from None
    rank = config.get("r") if isinstance(config, dict) else None
    if not (isinstance(rank, int) and not isinstance(rank, bool) and 0 < rank <= MAX_RANK):
        raise NovaError(f"{path}: the LoRA rank r={rank!r} is not a rank nova can load (1..{MAX_RANK})",
                        hint="the adapter_config.json is damaged or edited; save or copy the adapter again")
    weights = directory / "adapter_model.safetensors"
    if not weights.is_file() or config.get("rank_pattern"):
        return
    for name, (shape, _) in _shapes([weights]).items():
        if "lora_A" in name and shape and shape[0] != rank:
            raise NovaError(f"{path} says r={rank}, but {name} in {weights.name} has rank {shape[0]}",
                            hint="the adapter_config.json does not belong to these weights; save or copy the "
                                 "adapter again")
