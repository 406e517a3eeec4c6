"""Compose LoRA adapters on a base model, identically for training, DPO reference, merge and infer.

Chaining choice: a phase that starts from an earlier phase STACKS the earlier adapters,
frozen, on the same (quantized) base, and trains a new adapter beside them. We do not merge
the earlier adapter into the base before re-quantizing: nf4(base + delta) is not
nf4(base) + delta, so the next phase would start from a model slightly different from the one
the earlier phase was trained and evaluated as. Stacked, the starting point is exactly
"base + earlier adapters" (tests/train/test_pipeline.py checks logits are equal), and merge later
adds every delta in the same order, in full precision.

The adapter being trained is always named "default" (so PEFT and the HF Trainer save and
resume it at the root of a checkpoint); earlier phases' adapters carry their phase names.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nova.config.schema import LoraConfig
from nova.errors import NovaError
from nova.lazy import require
from nova.runs.layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS, has_adapter
from nova.runs.record import AdapterRef

TRAINABLE = "default"


def peft_lora_config(lora: LoraConfig) -> Any:
    peft = require("peft")
    return peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        use_rslora=lora.use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )


def _check_adapter_dir(ref: AdapterRef) -> None:
    if not has_adapter(ref.path):
        raise NovaError(f"adapter of '{ref.name}' not found at {ref.path} (no adapter_config.json)",
                        hint="train that phase first, or check the run directory")
    from nova.model.weights_check import check_adapter, read_header

    check_adapter(ref.path)  # an absurd rank would be allocated before PEFT noticed
    weights = ref.path / "adapter_model.safetensors"
    if weights.is_file():
        read_header(weights)  # cut off or oversized: one line


def stack_frozen(model: Any, chain: Sequence[AdapterRef]) -> Any:
    """Load each adapter of ``chain`` frozen onto ``model``; returns a PeftModel (or the model if none)."""
    peft = require("peft")
    peft_model = model
    for ref in chain:
        _check_adapter_dir(ref)
        with warnings.catch_warnings():
            # A chained phase's adapter_config.json names the adapters it needs (nova.runs.card_usage);
            # PEFT ignores the key with a warning, which nova, stacking that very chain, does not need.
            warnings.filterwarnings("ignore", message=r"Unexpected keyword arguments \['nova_requires_adapters'\]")
            if isinstance(peft_model, peft.PeftModel):
                peft_model.load_adapter(str(ref.path), adapter_name=ref.name, is_trainable=False)
            else:
                peft_model = peft.PeftModel.from_pretrained(peft_model, str(ref.path), adapter_name=ref.name,
                                                            is_trainable=False)
        # The file names the base portably (see save_trainable); PEFT looks the base up by this field
        # (is the vocabulary changed?) and would ask the hub about a bare name: point it at the loaded base.
        base_path = getattr(model, "name_or_path", None)
        if base_path:
            peft_model.peft_config[ref.name].base_model_name_or_path = base_path
    return peft_model


def add_trainable(model: Any, lora: LoraConfig, chain: Sequence[AdapterRef]) -> Any:
    """Base + frozen chain + a new trainable adapter named "default", all active."""
    peft = require("peft")
    peft_model = stack_frozen(model, chain)
    config = peft_lora_config(lora)
    if isinstance(peft_model, peft.PeftModel):
        peft_model.add_adapter(TRAINABLE, config)
    else:
        peft_model = peft.get_peft_model(peft_model, config, adapter_name=TRAINABLE)
    activate(peft_model, [*[r.name for r in chain], TRAINABLE], trainable=[TRAINABLE])
    return peft_model


@contextmanager
def keep_trainable_fp32(model: Any) -> Iterator[None]:
    """Around a TRL trainer's construction: keep the trainable weights fp32 (mixed precision's master
    weights), whatever the compute dtype, by putting the very tensors back after TRL's cast.

    TRL (1.16) casts every trainable parameter of a 4-bit model to bf16 when its trainer is built
    (following the QLoRA paper). Weights and Adam states in bf16 lose every update smaller than
    bf16's resolution relative to the weight (2^-8: a LoRA A entry of 0.03 ignores steps below
    1e-4, and a DPO step at lr 5e-6 is 20x smaller), so the adapter stops learning exactly where
    preference methods train; and the frozen copies of an adapter (earlier stages, the DPO
    reference) would run in another precision than the trained one. With fp32 weights under
    autocast (what the HF Trainer runs when the compute dtype is bf16) the LoRA matmuls still run
    in bf16, while the weights, gradients and optimizer states stay fp32 and every update lands.
    With fp32 compute, TRL's cast would also make each LoRA matmul an emulated bf16 one on CPUs
    without native bf16 (a [1064 x 8] x [8 x 1536] product: 25 ms instead of 0.4 ms). A cast back
    would keep bf16's rounding, so the original tensors are restored. The optimizer is created
    later, in ``train()``, from the restored tensors.
    """
    torch = require("torch")
    kept = {name: param.data for name, param in model.named_parameters()
            if param.requires_grad and param.data.dtype == torch.float32}
    yield
    for name, param in model.named_parameters():
        original = kept.get(name)
        if original is not None and param.data is not original:
            param.data = original


def activate(peft_model: Any, names: Sequence[str], trainable: Sequence[str] = ()) -> None:
    """Make exactly ``names`` active (their deltas are summed) and only ``trainable`` require grad."""
    names = list(names)
    peft_model.base_model.set_adapter(names if len(names) > 1 else names[0])
    frozen = [n for n in peft_model.peft_config if n not in trainable]
    if frozen:
        peft_model.base_model.set_requires_grad(frozen, requires_grad=False)
    if trainable:
        peft_model.base_model.set_requires_grad(list(trainable), requires_grad=True)


@contextmanager
def active_adapters(peft_model: Any, names: Sequence[str]) -> Iterator[None]:
    """Temporarily run with only ``names`` active (e.g. the DPO reference), then restore.

    A plain model (full fine-tuning) has no adapters: with none asked for it runs as it is.
    """
    if not hasattr(peft_model, "peft_config"):
        if names:
            raise NovaError(f"adapters {list(names)} asked for on a model without adapters (full fine-tuning)")
        yield
        return
    before = peft_model.base_model.active_adapters
    grads = {n: p.requires_grad for n, p in peft_model.named_parameters()}
    try:
        if names:
            activate(peft_model, names)
            yield
        else:
            with peft_model.disable_adapter():
                yield
    finally:
        peft_model.base_model.set_adapter(list(before) if len(before) > 1 else before[0])
        for n, p in peft_model.named_parameters():
            if n in grads:
                p.requires_grad_(grads[n])


def save_trainable(peft_model: Any, out_dir: Path, base: str | None = None,
                   state_dict: dict[str, Any] | None = None) -> None:
    """Save only the trainable adapter as a standard PEFT adapter directory at ``out_dir``.

    PEFT records the base as the model's ``name_or_path``, which for a local base is the path it was
    loaded from; an adapter that is shared must not carry this machine's directories. So the record
    becomes ``base`` (the configured ``model.base``) when that is a hub id or a relative path, else
    the model directory's name (``nova.merge.inputs.check_adapter_base`` accepts both).
    """
    peft_model.save_pretrained(str(out_dir), selected_adapters=[TRAINABLE], state_dict=state_dict)
    config_path = Path(out_dir) / ADAPTER_CONFIG
    config = json.loads(config_path.read_text(encoding="utf-8"))
    recorded = config.get("base_model_name_or_path")
    portable = base_name(base if base is not None else recorded)
    if portable == recorded:
        return
    config["base_model_name_or_path"] = portable
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    card = Path(out_dir) / "README.md"  # PEFT's model card repeats the base in its metadata
    if recorded and card.is_file():
        card.write_text(card.read_text(encoding="utf-8").replace(recorded, str(portable)), encoding="utf-8")


def base_name(base: str | None) -> str | None:
    """A base model as an adapter records it: a hub id or relative path as is, an absolute path
    (or one under ``~``) by its directory's name."""
    if not base or not (Path(base).is_absolute() or base.startswith("~")):
        return base
    return Path(base).expanduser().name


def trainable_weights(peft_model: Any) -> dict[str, Any]:
    """A detached copy of the trainable adapter's weights (to restart a stage cleanly)."""
    peft = require("peft")
    state = peft.get_peft_model_state_dict(peft_model, adapter_name=TRAINABLE)
    return {k: v.detach().clone() for k, v in state.items()}


def load_trainable_weights(peft_model: Any, source: Path | dict[str, Any]) -> None:
    """Put weights (a dict, or a saved adapter directory or checkpoint) into the trainable adapter.

    Raises NovaError when they do not fit it (another rank or target modules).
    """
    peft = require("peft")
    if isinstance(source, Path):
        source = require("safetensors.torch").load_file(str(source / ADAPTER_WEIGHTS))
    result = peft.set_peft_model_state_dict(peft_model, source, adapter_name=TRAINABLE)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise NovaError(f"saved adapter weights do not match this adapter ({len(unexpected)} unexpected weights)",
                        hint="resume with the same lora settings, or start the stage again with --fresh")
