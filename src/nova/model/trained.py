"""What a phase trains, a LoRA adapter or every weight: the one place that tells the two apart.

A LoRA phase trains one adapter ("default", nova.model.adapters) on a frozen, possibly quantized
base with the earlier phases' adapters stacked under it; a full fine-tuning phase (``adapter:
full``) trains the model itself, so its snapshot is every weight, its checkpoints and stage results
hold the whole model, and what it saves is a standard Hugging Face model directory (config.json,
safetensors, tokenizer) that ``AutoModelForCausalLM.from_pretrained`` loads with no PEFT and no
merge step. Everything that differs lives here: the phase asks ``trained_kind(full)`` for a
``Lora`` or ``Full`` and calls the same methods on either (precision, loading, the model to
train, a stage's reference, the phase's output); the stage code calls ``snapshot``, ``restore``
and ``save_trained``, and the model itself tells which it has (a PeftModel carries ``peft_config``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nova.errors import NovaError
from nova.files import atomic_dir
from nova.lazy import require
from nova.model.adapters import (
    TRAINABLE,
    activate,
    add_trainable,
    load_trainable_weights,
    save_trainable,
    trainable_weights,
)
from nova.runs.layout import RunDir
from nova.runs.record import AdapterRef

if TYPE_CHECKING:
    from nova.config.schema import LoraConfig
    from nova.model.loading import Placement

STAGE_REF = "stage_start"  # frozen copy of the phase adapter as it was when a later stage began
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


def save_trained(model: Any, out_dir: Path, *, base: str | None, tokenizer: Any = None,
                 state_dict: dict[str, Any] | None = None) -> None:
    """Save the adapter (LoRA) or the whole model with its tokenizer (full) into ``out_dir``;
    ``state_dict``: the adapter gathered whole from sharded ranks (nova.train.machinery.strategy)."""
    if not is_full(model):
        save_trainable(model, out_dir, base=base, state_dict=state_dict)
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


@dataclass(frozen=True)
class StageReference:
    """The reference a stage's trainer scores (DPO, KTO; GRPO with a KL term): the stage's starting point."""

    adapters: tuple[str, ...] = ()  # the composition active while it is scored (adapters)
    live: bool = True  # scored on each micro batch; False: precomputed from the weights as the stage starts


class Lora:
    """A LoRA phase: one adapter trained on the frozen base, the chain's adapters stacked frozen under it."""

    full = False
    noun = "adapter"
    resumes_in_place = True  # after an OOM, an attempt resumes from the stage's last checkpoint as it is

    def describe(self, lora: LoraConfig) -> str:
        return f"LoRA r={lora.r} alpha={lora.alpha} dropout={lora.dropout}"

    def fingerprint(self, lora: LoraConfig) -> dict[str, Any]:
        """What a resume must find unchanged (no "adapter" key: fingerprints from before full fine-tuning
        existed stay valid)."""
        return {f"lora.{k}": v for k, v in lora.model_dump(mode="json").items()}

    def check_placement(self, placement: Placement) -> None:
        """Any device and dtype trains an adapter (its weights stay fp32, nova.model.adapters)."""

    def weights_dtype(self) -> Any:
        return None  # the base loads in the compute dtype (or quantized)

    def prepare(self, base: Any, lora: LoraConfig, chain: Sequence[AdapterRef], placement: Placement) -> Any:
        """Stack the chain's adapters and add the trainable one (on a CPU with nova's faster LoRA dropout,
        nova.model.dropout).

        PEFT's prepare_model_for_kbit_training is deliberately not used: it upcasts embeddings, lm_head
        and norms to fp32 (about +2 GiB on an 8B model) and so makes the residual stream fp32, which the
        preflight memory model (calibrated on bf16 activations) would not expect. Frozen base weights plus
        input gradients for checkpointing are all QLoRA needs.
        """
        base.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
        model = add_trainable(base, lora, chain)
        if placement.device == "cpu":
            from nova.model.dropout import use_cpu_dropout

            use_cpu_dropout(model)
        return model

    def start_stage(self, model: Any, previous: Path | None, keeps_reference: bool) -> None:
        """A later stage that keeps a reference gets a frozen copy of the phase adapter as it stands now
        (``previous``: the stage before's saved adapter); one that keeps none holds no copy."""
        if previous is None:
            return
        if STAGE_REF in model.peft_config:  # the stage before's reference
            model.delete_adapter(STAGE_REF)
        if keeps_reference:
            model.load_adapter(str(previous), adapter_name=STAGE_REF, is_trainable=False)
        active = [n for n in model.peft_config if n not in (STAGE_REF, TRAINABLE)] + [TRAINABLE]
        activate(model, active, trainable=[TRAINABLE])

    def reference(self, chain: Sequence[str], later_stage: bool) -> StageReference:
        """Earlier phases, plus this phase's adapter as the stage began; scored live on each micro batch."""
        return StageReference((*chain, STAGE_REF) if later_stage else tuple(chain), live=True)

    def output(self, run: RunDir) -> Path:
        return run.adapter

    def stage_output(self, run: RunDir, stage: str) -> Path:
        return run.stage_output(stage, False)

    def base_adapters(self) -> list[str] | None:
        """The adapters active for the base model's answers beside the tuned ones: none."""
        return []

    def finish(self, run: RunDir, last_stage: str, cards: Callable[[Path], None], say: Callable[[str], None]) -> None:
        """adapter/: the last stage's adapter, with its model cards (written into the new directory)."""
        with atomic_dir(run.adapter, check=False) as tmp:
            shutil.copytree(run.stage_adapter(last_stage), tmp, dirs_exist_ok=True)
            cards(tmp)


class Full:
    """A full fine-tuning phase (adapter: full): every weight trained, as fp32 master weights."""

    full = True
    noun = "model"
    # after an OOM, an attempt starts from the stage's start weights first: a reference is precomputed
    # from the weights when the trainer is built
    resumes_in_place = False

    def describe(self, lora: LoraConfig) -> str:
        return "full fine-tuning (every weight)"

    def fingerprint(self, lora: LoraConfig) -> dict[str, Any]:
        return {"adapter": "full"}  # a resume that changes the kind refuses

    def check_placement(self, placement: Placement) -> None:
        """Full fine-tuning keeps every weight in fp32 (mixed precision's master weights: ``weights_dtype``)
        and computes in the compute dtype under autocast. Weights and Adam states in bf16 would round away
        every update below 2^-8 of a weight (at lr 2e-5 nearly all of them: a weight of 0.02 moves only in
        steps of 1.2e-4). fp16 compute is refused before the model loads: the HF Trainer's gradient scaler
        is not set up for it here, and fp16 updates underflow."""
        if placement.dtype_name == "float16":
            raise NovaError("adapter: full cannot train fp16 weights (the gradient scaler needs fp32 weights, and "
                            "fp16 updates underflow)", hint="set model.compute_dtype: fp32 (or bf16 on a GPU that "
                            "has it), or use adapter: lora on this GPU")

    def weights_dtype(self) -> Any:
        return require("torch").float32  # fp32 master weights

    def prepare(self, base: Any, lora: LoraConfig, chain: Sequence[AdapterRef], placement: Placement) -> Any:
        return prepare_full(base)

    def start_stage(self, model: Any, previous: Path | None, keeps_reference: bool) -> None:
        """Nothing to keep: a reference is precomputed from the weights as the stage starts."""

    def reference(self, chain: Sequence[str], later_stage: bool) -> StageReference:
        return StageReference((), live=False)

    def output(self, run: RunDir) -> Path:
        return run.model_dir

    def stage_output(self, run: RunDir, stage: str) -> Path:
        return run.stage_output(stage, True)

    def base_adapters(self) -> list[str] | None:
        return None  # the base is not in memory any more

    def finish(self, run: RunDir, last_stage: str, cards: Callable[[Path], None], say: Callable[[str], None]) -> None:
        """``model/``: the last stage's model directory (config.json, safetensors, tokenizer), written atomically.

        No merge step: ``AutoModelForCausalLM.from_pretrained(<run>/model)`` loads it as it is, and a LoRA
        phase that starts from this phase uses it as its base.
        """
        with atomic_dir(run.model_dir, check=False) as tmp:
            shutil.copytree(run.stage_model(last_stage), tmp, dirs_exist_ok=True, copy_function=_link_or_copy)
        say(f"model: {run.model_dir} (a standard Hugging Face model directory)")


def trained_kind(full: bool) -> Lora | Full:
    """What a phase trains: ``Full`` for adapter: full, else ``Lora``."""
    return Full() if full else Lora()


def _link_or_copy(src: str, dst: str) -> Any:
    """A hard link where the filesystem allows (the weights are written once and never changed in place:
    no second copy on disk), else a copy."""
    try:
        os.link(src, dst)
        return dst
    except OSError:
        return shutil.copy2(src, dst)
