"""Writing the merged model: generation config, weights in the output dtype, the reload check, provenance.

Everything is written into a temporary sibling of the output (``nova.files.atomic_dir``) and
renamed into place only after the written directory reloads with plain transformers and gives
the logits of the merged weights; any failure leaves no output and no temporary directory.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nova.errors import NovaError
from nova.files import atomic_dir, portable_path
from nova.lazy import require
from nova.merge.inputs import MERGE_INFO, check_disk
from nova.merge.parity import Parity, check_saved, compute_logits, max_abs_diff
from nova.merge.weights import Say, round_parameters

if TYPE_CHECKING:
    from nova.merge.inputs import MergePlan



def end_of_turn_id(tokenizer: Any) -> int | None:
    """The special token that ends an assistant turn (e.g. <|im_end|>, or GLM's next-turn <|user|>), if any."""
    from nova.data.template import reply_end_ids

    ids = reply_end_ids(tokenizer)
    return ids[0] if ids else None


def as_id_list(value: Any) -> list[int]:
    """A token id setting (None, one id or several) as a list, as generation configs allow all three."""
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list | tuple) else [int(value)]


def generation_config(source: str, model: Any, tokenizer: Any) -> Any:
    """The base's generation config with eos = base eos + tokenizer eos + the end-of-turn token."""
    transformers = require("transformers")
    try:
        gen = transformers.GenerationConfig.from_pretrained(source)
    except (OSError, ValueError):
        gen = transformers.GenerationConfig.from_model_config(model.config)
    ids: list[int] = []
    eos = [*as_id_list(gen.eos_token_id), *as_id_list(tokenizer.eos_token_id), *as_id_list(end_of_turn_id(tokenizer))]
    for i in eos:
        if i not in ids:
            ids.append(i)
    gen.eos_token_id = ids[0] if len(ids) == 1 else ids
    if tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
    if gen.bos_token_id is None and tokenizer.bos_token_id is not None:
        gen.bos_token_id = tokenizer.bos_token_id
    return gen


def serve_system_prompt(tokenizer: Any, record: Any) -> Any:
    """The run's system prompt, written into the chat template the merged model ships with, so a chat
    without a system message gets the one training gave it (nova.data.system); returns it."""
    from nova.data.system import run_system, with_default

    system = run_system(record, tokenizer)
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        tokenizer.chat_template = with_default(tokenizer.chat_template, system)
    return system


def restore_padding_side(tokenizer: Any, source: str) -> None:
    """nova trains with right padding; the shipped tokenizer keeps the base's own setting."""
    try:
        config = json.loads((Path(source) / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if config.get("padding_side") in ("left", "right"):
        tokenizer.padding_side = config["padding_side"]


def write_model(model: Any, tokenizer: Any, gen: Any, tmp: Path) -> None:
    """Save weights (safetensors shards), config, generation config and tokenizer (with chat template)."""
    model.generation_config = gen
    model.save_pretrained(str(tmp), safe_serialization=True, max_shard_size="5GB")
    tokenizer.save_pretrained(str(tmp))


def write_info(path: Path, plan: MergePlan, parity: Parity) -> None:
    """Provenance beside the weights: which base and adapters, how, and the parity figures.

    Local paths are written relative to the output (or as names, see ``portable_path``): the merged
    model is the file that gets shared, and it must not carry this machine's directory names.
    """
    cfg = plan.inputs.model_cfg

    def local(name: str) -> str:
        return portable_path(name, plan.out) if Path(name).expanduser().exists() or Path(name).is_absolute() \
            else name

    data = {"run_dir": portable_path(plan.inputs.run_dir, plan.out), "base": local(cfg.base),
            "base_source": local(plan.source), "quantization": cfg.quantization, "double_quant": cfg.double_quant,
            "adapters": [{"name": r.name, "path": portable_path(r.path, plan.out)} for r in plan.inputs.adapters],
            "from": plan.source_kind, "dtype": plan.dtype_name, "parity": parity.__dict__,
            "system_prompt": plan.system.to_dict() if plan.system is not None else None,
            "merged_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")  # inside the temporary directory


def write_verified(plan: MergePlan, model: Any, tokenizer: Any, batches: list[Any], merged: list[Any], parity: Parity,
                   tolerance: float, say: Say) -> Any:
    """Write to a temporary sibling, reload it with plain transformers, check it, rename it into place."""
    torch = require("torch")
    if plan.estimate is None:
        check_disk(plan.out, sum(p.numel() for p in model.parameters()) * (4 if plan.dtype_name == "float32" else 2))
    gen = generation_config(plan.source, model, tokenizer)
    round_parameters(model, plan.dtype_name)
    cast = compute_logits(model, batches)
    parity.dtype_cost = max_abs_diff(cast, merged)
    # check=False: plan_merge already refused an output that --force may not replace.
    with atomic_dir(plan.out, check=False) as tmp:
        say(f"writing {plan.dtype_name} weights to {tmp}")
        write_model(model.to(getattr(torch, plan.dtype_name)), tokenizer, gen, tmp)
        del model
        gc.collect()
        say("reloading the written model with plain transformers")
        parity.saved_vs_merged_cast = check_saved(tmp, batches, cast, bool(getattr(tokenizer, "chat_template", None)))
        if parity.saved_vs_merged_cast > tolerance:
            raise NovaError(f"the written model reloads with logits {parity.saved_vs_merged_cast:.3g} away from "
                            f"the merged weights (tolerance {tolerance:g}); nothing was kept")
        write_info(tmp / MERGE_INFO, plan, parity)
        _write_card(tmp, plan)
    return gen


def _write_card(tmp: Path, plan: MergePlan) -> None:
    """The merged model's README.md: what was merged, the data, settings, eval losses, how to load it."""
    from nova.runs.card import write_card

    write_card(tmp, plan.inputs.record, kind="merged", here=".", system=plan.system)
