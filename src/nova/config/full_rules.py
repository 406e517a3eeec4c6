"""The rules of full fine-tuning (``adapter: full``) in a config: checked by the schema's validators.

A full phase trains the weights themselves, so its base is unquantized, it has no LoRA settings,
and it runs only the methods whose reference needs no second copy of the model. In a pipeline a
LoRA phase may follow a full phase (its base becomes the full phase's model directory, see
``nova.plan``); a full phase may not follow LoRA phases. The functions take the schema's objects
(``PhaseConfig``, ``PipelineConfig``, ``ModelConfig``) and raise ValueError, as validators do.
"""

from __future__ import annotations

from typing import Any

from nova.methods import all_specs


def check_full_phase(phase: Any, model: Any = None) -> None:
    """A full fine-tuning phase trains the weights themselves: an unquantized base, no adapter settings,
    and only methods whose reference needs no second model (``model``: the base a pipeline gives it)."""
    if phase.adapter != "full":
        return
    model = model or phase.model
    if model is not None and model.quantization != "none":
        raise ValueError(f"adapter: full trains every weight in the compute dtype, not a {model.quantization} "
                         "base: set model.quantization: none (or adapter: lora for QLoRA)")
    if "lora" in phase.model_fields_set:
        raise ValueError("adapter: full trains no LoRA adapter: remove the lora section (or set adapter: lora)")
    # A method's spec says whether full fine-tuning runs it: a reference (DPO, KTO) is precomputed from the
    # weights as the stage starts, so no second model is held; ORPO and SimPO are not yet (TRL would load a
    # second copy).
    for stage in phase.stages:
        if not stage.spec.full:
            runs = ", ".join(s.name for s in all_specs() if s.full)
            raise ValueError(f"method {stage.method} is not available with adapter: full (full fine-tuning runs "
                             f"{runs}); use adapter: lora for it")
    if phase.retention.kl_weight > 0:
        raise ValueError("retention.kl_weight compares with the phase's start by switching its adapter off, and a "
                         "full phase has none: set it to 0 (replay alone works)")


def check_chain_kinds(pipeline: Any, phase: Any) -> None:
    """A LoRA phase may follow a full one (its base is the full phase's model directory); a full phase may
    not follow LoRA phases: their adapters would have to be merged into the weights first."""
    if phase.adapter != "full":
        return
    check_full_phase(phase, pipeline.model_for(phase.name))
    loras: list[str] = []  # the LoRA phases after the chain's last full phase
    for earlier in pipeline.chain(phase.name)[:-1]:
        loras = [] if earlier.adapter == "full" else [*loras, earlier.name]
    if loras:
        raise ValueError(f"phase '{phase.name}' (adapter: full) starts from LoRA phase(s) {', '.join(loras)}: "
                         "merge them first (nova merge) and make the merged directory this phase's model.base")
