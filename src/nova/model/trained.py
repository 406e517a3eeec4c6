"""What a stage trains, kept, restored and saved the same way whether it is a LoRA adapter or every weight.

A LoRA phase trains one adapter ("default", nova.model.adapters); a full fine-tuning phase
(``adapter: full``) trains the model itself, so its snapshot is every weight, its checkpoints
and stage results hold the whole model, and what it saves is a standard Hugging Face model
directory (config.json, safetensors, tokenizer) that ``AutoModelForCausalLM.from_pretrained``
loads with no PEFT and no merge step. The stage code calls the four functions below and never
asks which kind it has; the model itself tells (a PeftModel carries ``peft_config``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nova.errors import NovaError
from nova.lazy import require
from nova.model.adapters import load_trainable_weights, save_trainable, trainable_weights

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"


def is_full(model: Any) -> bool:
    """True for a plain model trained whole (no PEFT wrapper, so no adapters to compose)."""
    return not hasattr(model, "peft_config")


def prepare_full(model: Any) -> Any:
    """Every weight trainable. No input-gradient hook is needed: with trainable embeddings the
    checkpointed blocks already get inputs that require grad."""
    for param in model.parameters():
        param.requires_grad_(True)
    model.config.use_cache = False  # the KV cache is useless in training and costs memory
    return model


def snapshot(model: Any) -> dict[str, Any]:
    """A detached copy of what the stage trains, to restart cleanly after an OOM before any checkpoint.

    For a full model the copy is kept in CPU memory (a second copy on the GPU would double the
    weights, the very thing an OOM says there is no room for).
    """
    if not is_full(model):
        return trainable_weights(model)
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def restore(model: Any, source: Path | dict[str, Any]) -> None:
    """Put saved weights (a dict, a stage result or a checkpoint directory) into what the stage trains."""
    if not is_full(model):
        load_trainable_weights(model, source)
        return
    state = source if isinstance(source, dict) else _read_weights(Path(source))
    result = model.load_state_dict(state, strict=False)
    tied = set(_tied_keys(model))
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise NovaError(f"saved weights do not match this model ({len(missing)} missing, "
                        f"{len(result.unexpected_keys)} unexpected)",
                        hint="resume with the same model.base, or start the stage again with --fresh")


def save_trained(model: Any, out_dir: Path, *, base: str | None, tokenizer: Any = None) -> None:
    """Save the adapter (LoRA) or the whole model with its tokenizer (full) into ``out_dir``."""
    if not is_full(model):
        save_trainable(model, out_dir, base=base)
        return
    model.save_pretrained(str(out_dir))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))


def _tied_keys(model: Any) -> list[str]:
    """Weights that share storage with another (lm_head with the embeddings): saved once, loaded through it."""
    tied = getattr(model, "_tied_weights_keys", None) or []
    keys = list(tied.keys()) if isinstance(tied, dict) else list(tied)
    if getattr(model.config, "tie_word_embeddings", False) and "lm_head.weight" not in keys:
        keys.append("lm_head.weight")
    return keys


def _read_weights(directory: Path) -> dict[str, Any]:
    """A model directory's safetensors weights, one file or shards listed in the index."""
    load_file = require("safetensors.torch").load_file
    if (directory / SAFETENSORS).is_file():
        return load_file(str(directory / SAFETENSORS))
    try:
        index = json.loads((directory / SAFETENSORS_INDEX).read_text(encoding="utf-8"))
        shards = sorted(set(index["weight_map"].values()))
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise NovaError(f"no model weights in {directory} ({type(exc).__name__})",
                        hint="the stage result or checkpoint is incomplete; resume from an older one or use "
                        "--fresh") from None
    state: dict[str, Any] = {}
    for shard in shards:
        state.update(load_file(str(directory / shard)))
    return state
