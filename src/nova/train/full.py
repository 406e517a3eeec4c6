"""The parts of a full fine-tuning phase (``adapter: full``) that a LoRA phase does not have.

Everything else (data, stages, checkpoints, resume, signals, metrics) is the shared path: the
stage code saves and restores through ``nova.model.trained``, which handles a whole model as it
handles an adapter. What is left here: the precision full fine-tuning can run in, and the
phase's output, ``model/``, a standard Hugging Face model directory.
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING, Any

from nova.errors import NovaError
from nova.files import atomic_dir

if TYPE_CHECKING:
    from nova.model.loading import Placement
    from nova.train.context import PhaseContext


def check_full_placement(placement: Placement) -> None:
    """Full fine-tuning keeps every weight in fp32 (mixed precision's master weights: nova.train.phase
    loads them so) and computes in the compute dtype under autocast. Weights and Adam states in bf16
    would round away every update below 2^-8 of a weight (at lr 2e-5 nearly all of them: a weight of
    0.02 moves only in steps of 1.2e-4). fp16 compute is refused before the model loads: the HF
    Trainer's gradient scaler is not set up for it here, and fp16 updates underflow."""
    if placement.dtype_name == "float16":
        raise NovaError("adapter: full cannot train fp16 weights (the gradient scaler needs fp32 weights, and fp16 "
                        "updates underflow)", hint="set model.compute_dtype: fp32 (or bf16 on a GPU that has it), "
                        "or use adapter: lora on this GPU")


def _link_or_copy(src: str, dst: str) -> Any:
    """A hard link where the filesystem allows (the weights are written once and never changed in place:
    no second copy on disk), else a copy."""
    try:
        os.link(src, dst)
        return dst
    except OSError:
        return shutil.copy2(src, dst)


def finish_full_phase(ctx: PhaseContext) -> None:
    """``model/``: the last stage's model directory (config.json, safetensors, tokenizer), written atomically.

    No merge step: ``AutoModelForCausalLM.from_pretrained(<run>/model)`` loads it as it is, and a LoRA phase
    that starts from this phase uses it as its base.
    """
    last = ctx.run.stage_model(ctx.planned.stages[-1].name)
    with atomic_dir(ctx.run.model_dir, check=False) as tmp:
        shutil.copytree(last, tmp, dirs_exist_ok=True, copy_function=_link_or_copy)
    ctx.log.say(f"[{ctx.phase.name}] model: {ctx.run.model_dir} (a standard Hugging Face model directory)")
