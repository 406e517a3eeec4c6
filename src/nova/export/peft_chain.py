"""One standard PEFT LoRA adapter equal to base + every adapter of a run's chain.

A chained phase's ``adapter/`` is only correct on top of the earlier phases' adapters; PEFT,
vLLM and TGI load one adapter on the base, and would silently give another model. LoRA deltas
add, so the chain folds into one adapter exactly: for every module,

    sum_i s_i * B_i @ A_i  ==  [s_1 B_1 | s_2 B_2 | ...] @ [A_1; A_2; ...]

(``s_i`` = alpha_i / r_i, or alpha_i / sqrt(r_i) with rsLoRA, per module where ``alpha_pattern``
says so). The scales are folded into B, so the written adapter has ``lora_alpha == r`` (scale 1)
and no rsLoRA. A module that fewer adapters of the chain touch has a smaller total rank; it is
padded with zero rows and columns to the largest one, so every module has the same ``r`` and no
``rank_pattern`` is needed: loaders that read one ``r`` and one ``lora_alpha`` (vLLM, TGI,
llama.cpp's ``convert_lora_to_gguf.py``) get exactly the same deltas as PEFT does.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nova.errors import NovaError
from nova.lazy import require

if TYPE_CHECKING:
    from nova.runs import AdapterRef, RunRecord

PREFIX = "base_model.model."
# Adapter settings a standalone adapter cannot fold in: refused with the key named.
_UNSUPPORTED = {"use_dora": "DoRA", "modules_to_save": "modules_to_save", "layers_to_transform": "layers_to_transform",
                "lora_bias": "LoRA biases"}


@dataclass
class Combined:
    """The folded adapter: tensors (PEFT key -> fp32 tensor), its rank, and the module leaf names."""

    tensors: dict[str, Any]
    rank: int
    target_modules: list[str]
    sources: list[str]


def _pattern_value(patterns: dict[str, Any], module: str, default: float) -> float:
    """PEFT's ``alpha_pattern`` lookup (``peft.utils.other.get_pattern_key``) for one module."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return float(value)
    return float(default)


def _read_config(ref: AdapterRef) -> dict[str, Any]:
    from nova.runs.layout import ADAPTER_CONFIG

    config = json.loads((ref.path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    if config.get("peft_type") != "LORA":
        raise NovaError(f"adapter '{ref.name}' ({ref.path}) is a {config.get('peft_type')} adapter, not LoRA")
    for key, what in _UNSUPPORTED.items():
        if config.get(key) not in (None, False, [], {}):
            raise NovaError(f"adapter '{ref.name}' uses {what}, which one standalone LoRA adapter cannot hold",
                            hint="merge the run instead: nova merge --run RUN_DIR")
    if config.get("bias", "none") != "none":
        raise NovaError(f"adapter '{ref.name}' trains biases (bias: {config['bias']}), which LoRA A/B cannot hold",
                        hint="merge the run instead: nova merge --run RUN_DIR")
    return config


def scaled_pairs(ref: AdapterRef) -> dict[str, tuple[Any, Any]]:
    """module name -> (A, s * B) in fp32 for one saved adapter."""
    from nova.runs.layout import ADAPTER_WEIGHTS

    config = _read_config(ref)
    weights = require("safetensors.torch").load_file(str(ref.path / ADAPTER_WEIGHTS))
    pairs: dict[str, tuple[Any, Any]] = {}
    for key in weights:
        if not key.endswith(".lora_A.weight"):
            if not key.endswith(".lora_B.weight"):
                raise NovaError(f"adapter '{ref.name}' holds '{key}', which is not a LoRA A/B matrix",
                                hint="merge the run instead: nova merge --run RUN_DIR")
            continue
        module = key.removeprefix(PREFIX).removesuffix(".lora_A.weight")
        a = weights[key].float()
        b = weights[key.replace(".lora_A.", ".lora_B.")].float()
        rank = int(a.shape[0])
        alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config["lora_alpha"])
        scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        pairs[module] = (a, b * scale)
    if not pairs:
        raise NovaError(f"adapter '{ref.name}' ({ref.path}) holds no LoRA weights")
    return pairs


def combine(refs: list[AdapterRef]) -> Combined:
    """Fold the chain into one adapter of uniform rank (zero-padded where modules have less)."""
    torch = require("torch")
    per_module: dict[str, list[tuple[Any, Any]]] = {}
    for ref in refs:
        for module, pair in scaled_pairs(ref).items():
            per_module.setdefault(module, []).append(pair)
    rank = max(sum(int(a.shape[0]) for a, _ in pairs) for pairs in per_module.values())
    tensors: dict[str, Any] = {}
    for module, pairs in sorted(per_module.items()):
        a = torch.cat([p[0] for p in pairs], dim=0)
        b = torch.cat([p[1] for p in pairs], dim=1)
        pad = rank - int(a.shape[0])
        if pad:
            a = torch.cat([a, a.new_zeros(pad, a.shape[1])], dim=0)
            b = torch.cat([b, b.new_zeros(b.shape[0], pad)], dim=1)
        tensors[f"{PREFIX}{module}.lora_A.weight"] = a.contiguous()
        tensors[f"{PREFIX}{module}.lora_B.weight"] = b.contiguous()
    leaves = sorted({m.rsplit(".", 1)[-1] for m in per_module})
    return Combined(tensors, rank, leaves, [r.name for r in refs])


def adapter_config(combined: Combined, base: str | None) -> dict[str, Any]:
    """A plain PEFT LoRA config: one r, lora_alpha == r (the scales are in B), no dropout."""
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base,
        "r": combined.rank, "lora_alpha": combined.rank, "lora_dropout": 0.0, "target_modules": combined.target_modules,
        "bias": "none", "use_rslora": False, "use_dora": False, "fan_in_fan_out": False, "inference_mode": True,
        "rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": None, "init_lora_weights": True,
        "layers_to_transform": None, "layers_pattern": None,
    }


def write_standalone(record: RunRecord, out: Path) -> Combined:
    """Write ``adapter_model.safetensors`` and ``adapter_config.json`` of the folded chain into ``out``."""
    from nova.model.adapters import base_name
    from nova.runs.layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS

    combined = combine(record.require_adapters())
    require("safetensors.torch").save_file(combined.tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config = adapter_config(combined, base_name(record.model.base))
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return combined

