"""The weights of a merge: the trained composition, the full-precision base, and the fp32 merge.

For a quantized run the base is first loaded exactly as in training (quantized, adapters
stacked): its logits are "what was trained", and with ``--from dequantized`` its bitsandbytes
weights are read back in fp32. The base is then loaded in full precision, the dequantized weights
are put in (or the original ones kept), the chain is stacked as in training and PEFT's
``merge_and_unload`` adds every delta. The merge is accepted only when its logits equal those of
the unmerged composition on the same fp32 base.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from nova.errors import NovaError
from nova.lazy import require
from nova.merge.parity import Parity, compute_logits, max_abs_diff

if TYPE_CHECKING:
    from nova.merge.inputs import MergeInputs, MergePlan
    from nova.runs import AdapterRef

Say = Callable[[str], None]


def check_adapter_shapes(model: Any, ref: AdapterRef) -> None:
    """Every LoRA matrix must fit its module of the base (a different base fails here, with names)."""
    from nova.runs.layout import ADAPTER_WEIGHTS

    safetensors = require("safetensors")
    weights = ref.path / ADAPTER_WEIGHTS
    if not weights.exists():
        raise NovaError(f"adapter '{ref.name}' has no {ADAPTER_WEIGHTS} in {ref.path}")
    modules = dict(model.named_modules())
    problems: list[str] = []
    with safetensors.safe_open(str(weights), framework="pt") as fh:
        for key in fh.keys():  # noqa: SIM118 (safe_open is not a dict)
            shape = list(fh.get_slice(key).get_shape())
            problem = _shape_problem(modules, key, shape)
            if problem:
                problems.append(problem)
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise NovaError(f"adapter '{ref.name}' does not fit the base model: {shown}",
                        hint="the adapter was trained on a different base model")


def _shape_problem(modules: dict[str, Any], key: str, shape: list[int]) -> str | None:
    """None when ``key`` (a saved LoRA tensor) fits its base module, else what is wrong."""
    for part, dim in ((".lora_A.", 1), (".lora_B.", 0)):
        if part in key:
            name = key.split(part)[0].removeprefix("base_model.model.")
            module = modules.get(name)
            if module is None:
                return f"{name} is not a module of the base"
            size = getattr(module, "in_features" if dim == 1 else "out_features", None)
            if size is None:  # not a linear layer (embedding LoRA): PEFT checks those itself
                return None
            expected = int(size)
            if len(shape) != 2 or shape[dim] != expected:
                return f"{key} has shape {shape}, the base's {name} needs {'in' if dim else 'out'} size {expected}"
    return None


def stack_checked(model: Any, adapters: Sequence[AdapterRef]) -> Any:
    """Stack the chain on ``model`` as in training, all active, after checking every adapter fits it."""
    from nova.model.adapters import activate, stack_frozen

    for ref in adapters:
        check_adapter_shapes(model, ref)
    peft_model = stack_frozen(model, adapters)
    names = [r.name for r in adapters]
    activate(peft_model, names)
    peft_model.eval()
    return peft_model


def quantized_composition(inputs: MergeInputs, source: str, batches: list[Any], want_weights: bool,
                          say: Say) -> tuple[list[Any], dict[str, Any]]:
    """The model as trained (quantized base + adapters): its logits, and its base weights dequantized.

    The dequantized weights are read back from the same bitsandbytes modules the trainer used,
    so ``--from dequantized`` starts from exactly the weights the adapters were trained against.
    """
    from nova.model.loading import choose_placement, load_base_model

    placement = choose_placement(inputs.model_cfg.compute_dtype)
    say(f"loading the trained composition: {source} ({inputs.model_cfg.quantization}, {placement.dtype_name})")
    model = load_base_model(inputs.model_cfg, placement, source)
    weights = dequantized_weights(model) if want_weights else {}
    model = stack_checked(model, inputs.adapters)
    logits = compute_logits(model, batches)
    del model
    gc.collect()
    return logits, weights


def dequantized_weights(model: Any) -> dict[str, Any]:
    """fp32 CPU copies of every bitsandbytes-quantized linear weight, keyed by module name."""
    bnb = require("bitsandbytes")
    torch = require("torch")
    out: dict[str, Any] = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, bnb.nn.Linear4bit):
            value = bnb.functional.dequantize_4bit(weight.data, weight.quant_state)
        elif isinstance(module, bnb.nn.Linear8bitLt):
            scb = getattr(weight, "SCB", None)
            if scb is None:
                raise NovaError(f"cannot dequantize the int8 weight of {name}", hint="use --from original")
            value = bnb.functional.int8_vectorwise_dequant(weight.data, scb)
        else:
            continue
        out[name] = value.to(device="cpu", dtype=torch.float32).reshape(module.out_features, module.in_features)
    if not out:
        raise NovaError("the quantized base has no bitsandbytes layers to dequantize", hint="use --from original")
    return out


def load_full_precision(inputs: MergeInputs, source: str, dequantized: dict[str, Any], say: Say) -> Any:
    """The base in fp32 (on the GPU when there is one), optionally with the dequantized weights put in."""
    torch = require("torch")
    from nova.model.loading import Placement, load_base_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    say(f"loading {source} in fp32 on {device}" + (" (dequantized weights)" if dequantized else ""))
    model = load_base_model(inputs.model_cfg, Placement(device, torch.float32), source, quantize=False)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, value in dequantized.items():
            target = modules.get(name)
            if target is None or tuple(target.weight.shape) != tuple(value.shape):
                raise NovaError(f"dequantized weight {name} does not fit the full-precision base",
                                hint="use --from original")
            target.weight.copy_(value.to(target.weight.device))
    model.eval()
    return model


def _trained_reference(plan: MergePlan, batches: list[Any], say: Say) -> tuple[list[Any] | None, dict[str, Any]]:
    """The trained composition's logits (None when not comparable) and, for ``dequantized``, its weights."""
    if plan.source_kind == "dequantized":
        return quantized_composition(plan.inputs, plan.source, batches, True, say)
    if plan.inputs.model_cfg.quantization != "none":
        try:  # only informational with --from original: a machine without bitsandbytes can still merge
            return quantized_composition(plan.inputs, plan.source, batches, False, say)[0], {}
        except NovaError as exc:
            say(f"skipped the comparison with the trained (quantized) model: {exc}")
    return None, {}


def merge_in_fp32(plan: MergePlan, batches: list[Any], tolerance: float, say: Say) -> tuple[Any, list[Any], Parity]:
    """Merge the chain into fp32 weights; fails unless the merged logits equal base + adapters (fp32)."""
    trained, dequantized = _trained_reference(plan, batches, say)
    model = load_full_precision(plan.inputs, plan.source, dequantized, say)
    dequantized.clear()
    peft_model = stack_checked(model, plan.inputs.adapters)
    unmerged = compute_logits(peft_model, batches)
    names = [r.name for r in plan.inputs.adapters]
    say(f"merging {len(names)} adapter(s): {', '.join(names)}")
    merged_model = peft_model.merge_and_unload(safe_merge=True, adapter_names=names)
    del peft_model
    merged = compute_logits(merged_model, batches)
    diff = max_abs_diff(merged, unmerged)
    if diff > tolerance:
        raise NovaError(f"merged model differs from base + adapters by {diff:.3g} (max abs logit, fp32), "
                        f"above the tolerance {tolerance:g}; nothing was written",
                        hint="report this as a bug; --tolerance raises the limit")
    parity = Parity(diff, 0.0, 0.0, max_abs_diff(merged, trained) if trained is not None else None,
                    len(batches), sum(int(b.shape[1]) for b in batches))
    return merged_model, merged, parity


def round_parameters(model: Any, dtype_name: str) -> None:
    """Round the weights to ``dtype_name`` in place, kept in fp32: the logits of exactly what is saved.

    Only parameters: casting the whole model would also round buffers such as the rotary
    frequencies, which are not saved and are recomputed in full precision on reload.
    """
    torch = require("torch")
    dtype = getattr(torch, dtype_name)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.to(dtype).to(param.dtype))
