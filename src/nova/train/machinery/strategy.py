"""Which engine splits a distributed run (DDP, FSDP2 or DeepSpeed ZeRO), and its settings from nova's.

nova only chooses and configures; accelerate and the HF Trainer run them:

- **ddp**: a full (4-bit) replica per GPU, placed with ``device_map={"": local_rank}`` (never
  ``"auto"``, which would silently turn DDP into model parallelism on one process), gradients
  all-reduced. The effective batch is micro batch x accumulation x ranks.
- **fsdp** (FSDP2) for models whose replica does not fit: every transformer layer wrapped and
  sharded, the 4-bit weights stored in the compute dtype (``bnb_4bit_quant_storage``) so FSDP can
  shard them, the checkpoint loaded on rank 0 and broadcast (``cpu_ram_efficient_loading``), the
  adapter gathered whole when saved (``FULL_STATE_DICT``; accelerate once kept only rank 0's shard).
- **deepspeed**: ZeRO-2 or ZeRO-3, its JSON config generated from the stage's settings.
- **auto**: ddp when the estimate says a replica fits each GPU, else fsdp.

Known-broken combinations are refused with the alternative instead of failing deep inside a run.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from nova.config.schema import DistributedConfig, ModelConfig, StageConfig
from nova.errors import NovaError
from nova.lazy import require
from nova.plan import resolve_strategy

PAGED_OPTIMIZERS = ("paged_adamw_8bit", "paged_adamw_32bit", "adamw_8bit")


@dataclass(frozen=True)
class Strategy:
    """The engine a stage runs under, and the TrainingArguments that select it."""

    name: str  # single, ddp, fsdp, deepspeed
    args: dict[str, Any]

    @property
    def shards_weights(self) -> bool:
        return self.name == "fsdp" or (self.name == "deepspeed" and self.args.get("deepspeed", {}).get(
            "zero_optimization", {}).get("stage") == 3)

    def describe(self, world: int) -> str:
        """One line for the console: the engine and what it splits."""
        if self.name == "fsdp":
            return f"engine: weights sharded over {world} ranks (fsdp, FSDP2 fully_shard)"
        if self.name == "deepspeed":
            stage = self.args.get("deepspeed", {}).get("zero_optimization", {}).get("stage")
            return f"engine: deepspeed ZeRO-{stage} over {world} ranks"
        return f"engine: {self.name} over {world} ranks"

    def engage(self) -> None:
        """Make accelerate build the engine named here, before the Trainer creates its Accelerator.

        accelerate turns FSDP on only for GPU-like process groups (``AcceleratorState``: the
        ``MULTI_GPU``, ``MULTI_XPU``, ... branch); on CPU ranks (``MULTI_CPU``, gloo) it silently
        wraps DDP instead. torch's FSDP2 (``fully_shard``) itself runs on gloo, so for fsdp on CPU
        ranks the process group is labelled multi-device for accelerate, which then shards for real.
        """
        if self.name != "fsdp":
            return
        from accelerate.state import AcceleratorState, PartialState
        from accelerate.utils import DistributedType

        state = PartialState()
        if state.num_processes > 1 and state.distributed_type in (DistributedType.NO, DistributedType.MULTI_CPU):
            PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU
            if AcceleratorState._shared_state:  # an earlier stage's state would keep DDP
                AcceleratorState._reset_state()


def resolve(cfg: DistributedConfig, world: int, replica_fits: bool | None) -> str:
    """The strategy name for ``world`` ranks (nova.plan.resolve_strategy: preflight uses it too)."""
    return resolve_strategy(cfg.strategy, world, replica_fits)


def check_combination(name: str, model: ModelConfig, stage: StageConfig) -> None:
    """Refuse what is known not to work, with the way out."""
    quantized = model.quantization in ("nf4", "fp4")
    # a method that always scores its reference by switching adapters on the batch (DPO, KTO)
    if name == "fsdp" and stage.spec.reference == "start" and quantized:
        what = stage.method.upper()
        raise NovaError(f"{what} on a 4-bit base under FSDP2 is not supported (the reference pass re-gathers "
                        "quantized shards TRL cannot restore)", hint=f"use distributed.strategy: ddp for the {what} "
                        "phase, or quantization: none")
    if name == "fsdp" and stage.training.optimizer in PAGED_OPTIMIZERS:
        raise NovaError(f"training.optimizer {stage.training.optimizer} does not work under FSDP (bitsandbytes' "
                        "8-bit and paged states are not sharded)", hint="use optimizer: adamw_torch with fsdp")
    if name == "fsdp" and model.quantization == "int8":
        raise NovaError("8-bit (int8) bases cannot be sharded by FSDP", hint="use quantization: nf4 or none")
    if name == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise NovaError("distributed.strategy is deepspeed but deepspeed is not installed",
                        hint="pip install 'nova-tune[deepspeed]', or use ddp or fsdp")


def check_deepspeed_on_cpu() -> None:
    """DeepSpeed's CPU accelerator (deepspeed.accelerator.cpu_accelerator) runs ZeRO-2/3 on gloo ranks,
    but first compiles its shared-memory collective (``deepspeed_shm_comm_op``, C++ through ninja, about
    4 minutes on 2 cores, cached in ~/.cache/torch_extensions): without a C++ compiler it fails deep
    inside the first step, so it is refused here with the way out."""
    import shutil

    if not any(shutil.which(cc) for cc in ("c++", "g++", "clang++")):
        raise NovaError("distributed.strategy is deepspeed on CPU ranks, but no C++ compiler was found (DeepSpeed's "
                        "CPU backend compiles its shared-memory collective on first use)",
                        hint="install g++ (apt-get install g++), or use distributed.strategy: ddp or fsdp")


def deepspeed_config(cfg: DistributedConfig, stage: StageConfig, bf16: bool, fp16: bool) -> dict[str, Any]:
    """A ZeRO config from nova's settings ("auto" lets the HF integration fill in the rest)."""
    t = stage.training
    zero: dict[str, Any] = {"stage": cfg.zero_stage, "overlap_comm": True, "contiguous_gradients": True,
                            "reduce_bucket_size": "auto"}
    if cfg.zero_stage == 3:
        zero.update({"stage3_gather_16bit_weights_on_model_save": True, "stage3_prefetch_bucket_size": "auto",
                     "stage3_param_persistence_threshold": "auto"})
    return {"train_micro_batch_size_per_gpu": t.micro_batch_size,
            "gradient_accumulation_steps": t.gradient_accumulation_steps, "gradient_clipping": t.max_grad_norm,
            "zero_optimization": zero, "bf16": {"enabled": bf16}, "fp16": {"enabled": fp16},
            "steps_per_print": 10**9, "wall_clock_breakdown": False}


def fsdp_args(stage: StageConfig) -> dict[str, Any]:
    """FSDP2 over every decoder layer (the model's own _no_split_modules), adapter saved whole."""
    return {"fsdp": True,  # full_shard + auto_wrap, as fsdp_config spells it (the string form is deprecated)
            "fsdp_config": {"version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                            "cpu_ram_efficient_loading": True, "state_dict_type": "FULL_STATE_DICT",
                            "activation_checkpointing": stage.training.gradient_checkpointing,
                            "reshard_after_forward": True}}


def strategy_for(cfg: DistributedConfig, world: int, model: ModelConfig, stage: StageConfig, *, cuda: bool,
                 bf16: bool, fp16: bool, replica_fits: bool | None = None) -> Strategy:
    """The Strategy of one stage (TrainingArguments extras; empty in one process)."""
    name = resolve(cfg, world, replica_fits)
    if name == "single":
        return Strategy(name, {})
    check_combination(name, model, stage)
    if name == "deepspeed" and not cuda:
        check_deepspeed_on_cpu()
    common: dict[str, Any] = {"ddp_timeout": cfg.timeout_s, "ddp_backend": "nccl" if cuda else "gloo"}
    if name == "ddp":
        return Strategy(name, {**common, "ddp_find_unused_parameters": False})
    if name == "fsdp":
        # FSDP's own activation checkpointing replaces the Trainer's (which would all-gather twice)
        cpu_ranks = {} if cuda else {"accelerator_config": {"use_configured_state": True}}  # see engage()
        return Strategy(name, {**common, **fsdp_args(stage), "gradient_checkpointing": False, **cpu_ranks})
    return Strategy(name, {**common, "deepspeed": deepspeed_config(cfg, stage, bf16, fp16)})


def whole_trainable(model: Any) -> dict[str, Any] | None:
    """Every rank: the trainable weights gathered whole onto the CPU when FSDP2 has sharded them
    (None when nothing is sharded: the model saves itself as on one process).

    Under FSDP2 each parameter is a DTensor holding 1/N of the tensor; saving it on rank 0 alone
    would write only rank 0's shard (the trap that once put (N-1)/N of an adapter back to its
    initial values on resume). ``full_tensor()`` is a collective, so every rank calls this in the
    same order; only the adapter is gathered, never the sharded base.

    ZeRO-3 partitions every parameter above ``stage3_param_persistence_threshold`` (10 x hidden
    size): rank 0's own copy of the adapter is then empty (shape [0]), and a stage saved from it was
    written as 0-element tensors (the next stage's reference failed to load them). Those are
    gathered the same way, through DeepSpeed (``GatheredParameters``, a collective too).
    """
    from torch.distributed.tensor import DTensor as dtensor  # torch is there: a model is

    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if any(hasattr(p, "ds_id") for _, p in params):  # ZeRO-3's partitioned parameters
        deepspeed = require("deepspeed")

        with deepspeed.zero.GatheredParameters([p for _, p in params]):
            return {name: p.detach().to("cpu", copy=True) for name, p in params}
    if not any(isinstance(p, dtensor) for _, p in params):
        return None
    return {name: (p.full_tensor() if isinstance(p, dtensor) else p).detach().to("cpu", copy=True)
            for name, p in params}


@contextmanager
def whole_adapter(model: Any) -> Iterator[None]:
    """Every rank: ZeRO-3's partitioned trainable weights gathered whole while a later stage's trainer
    is built (TRL's DPO, KTO and GRPO trainers copy the trained adapter into a reference adapter in
    their constructor, and a partitioned weight is empty there: "The size of tensor a (64) must match
    the size of tensor b (0)"); partitioned again on leaving. Nothing to do elsewhere."""
    params = [p for p in model.parameters() if p.requires_grad and hasattr(p, "ds_id")]
    if not params:
        yield
        return
    with require("deepspeed").zero.GatheredParameters(params):
        yield


def shard_check(say: Any) -> Any:
    """A callback that checks, once the Trainer has wrapped the model, that FSDP2 sharded every weight.

    A weight FSDP cannot flatten stays whole on every rank without a word: 4-bit weights stored as
    uint8 are the known case (FSDP-QLoRA needs ``bnb_4bit_quant_storage`` in the compute dtype, see
    ``quantization_config``); the run would train, with a full base on each rank, while the config
    says sharded. So: one line saying what is sharded, or a refusal naming the first whole weight."""
    transformers = require("transformers")

    class ShardCheck(transformers.TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            from torch.distributed.tensor import DTensor as dtensor

            params = list(model.named_parameters())
            whole = [f"{name}, {str(p.dtype)[6:]}" for name, p in params if not isinstance(p, dtensor)]
            if whole:
                raise NovaError(f"distributed.strategy is fsdp but {len(whole)} of {len(params)} weights were left "
                                f"whole on every rank (first: {whole[0]})", hint="report the versions of torch, "
                                "accelerate and bitsandbytes; use distributed.strategy: ddp meanwhile")
            packed = [m.weight for m in model.modules()  # bitsandbytes' own, not PEFT's wrapper of the same name
                      if type(m).__name__ == "Linear4bit" and type(m).__module__.startswith("bitsandbytes")]
            four_bit = f", {len(packed)} of them 4-bit stored as {str(packed[0].dtype)[6:]}" if packed else ""
            say(f"fsdp: all {len(params)} weights sharded across the ranks{four_bit}")

    return ShardCheck()


def release_engine(trainer: Any, strategy: Strategy | None) -> None:
    """Take DeepSpeed's engine off the model once its stage is done (the stage's adapter is saved after).

    The engine hooks every trainable parameter; the next stage of the phase builds its own engine on
    the same model, and the first engine's hooks, still there, reduced each gradient a second time: a
    stage after another one under DeepSpeed failed at its first step ("Gradient computed twice for
    this partition" under ZeRO-2, ``'NoneType' object has no attribute 'numel'`` under ZeRO-3)."""
    if strategy is not None and strategy.name == "deepspeed":
        trainer.accelerator.free_memory()  # DeepSpeedEngine.destroy(): its hooks removed


def check_engine(trainer: Any, strategy: Strategy | None) -> None:
    """Refuse to train under another engine than the one configured (accelerate falls back to DDP
    without a word where it cannot set FSDP or DeepSpeed up)."""
    if strategy is None or strategy.name in ("single", "ddp"):
        return
    running = ("fsdp" if getattr(trainer, "is_fsdp_enabled", False) else
               "deepspeed" if getattr(trainer, "is_deepspeed_enabled", False) else "ddp")
    if running != strategy.name:
        raise NovaError(f"distributed.strategy is {strategy.name} but the trainer set up {running} (accelerate "
                        f"could not enable {strategy.name} on these ranks)", hint="use distributed.strategy: ddp, "
                        "or report the versions of torch and accelerate")
