"""What every method's trainer is built from, and the skeleton they share: arguments, trainer, callbacks.

A method's trainer module (named by its spec's ``trainer``, nova.methods) has one entry,
``build_<method>_trainer(inputs: TrainerInputs)``. nova tokenizes the data itself (``nova.data``:
masks from the chat template, every drop counted), so every trainer receives pre-tokenized
datasets and skips TRL's own preparation. The reference a method scores (DPO, KTO, GRPO with a KL
term) is the stage's starting point; ``reference.py`` holds how it is scored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nova.config.schema import StageConfig
from nova.lazy import require
from nova.model.loading import Placement
from nova.model.trained import StageReference
from nova.train.machinery.callbacks import MetricsCallback, ProgressCallback
from nova.train.machinery.resilience import StopRequest, stop_callback
from nova.train.machinery.strategy import Strategy, check_engine


def _report_to(targets: Sequence[str]) -> list[str] | str:
    """TensorBoard / W&B when asked for and installed (a missing one is an error, not a silent skip)."""
    import importlib.util

    from nova.errors import NovaError

    package = {"tensorboard": "tensorboard", "wandb": "wandb"}
    for target in targets:
        if importlib.util.find_spec(package[target]) is None:
            raise NovaError(f"training.report_to includes '{target}' but it is not installed",
                            hint=f"pip install 'nova-tune[{target}]' or remove it from report_to")
    return list(targets) or "none"


def common_args(stage: StageConfig, output_dir: Path, placement: Placement, has_eval: bool,
                strategy: Strategy | None = None) -> dict[str, Any]:
    """TrainingArguments shared by every method, from the stage's ``training:`` section and the
    distributed strategy's own arguments (nova.train.machinery.strategy)."""
    t = stage.training
    torch = require("torch")
    args = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": t.micro_batch_size,
        "per_device_eval_batch_size": t.micro_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.lr_scheduler,
        "warmup_steps": t.warmup_steps if t.warmup_steps is not None else t.warmup_ratio,
        "max_steps": t.max_steps or -1,
        "num_train_epochs": t.num_epochs,
        "weight_decay": t.weight_decay,
        "optim": t.optimizer,
        "max_grad_norm": t.max_grad_norm,
        "gradient_checkpointing": t.gradient_checkpointing,
        "gradient_checkpointing_kwargs": {"use_reentrant": False},
        "logging_steps": t.logging_steps,
        "logging_first_step": True,
        "eval_strategy": "steps" if has_eval else "no",
        "eval_steps": t.eval_steps,
        "save_strategy": "steps",
        "save_steps": t.save_steps,
        "save_total_limit": t.save_total_limit,
        "seed": t.seed,
        "data_seed": t.seed,
        "bf16": placement.compute_dtype == torch.bfloat16,
        "fp16": placement.compute_dtype == torch.float16,
        "use_cpu": placement.device == "cpu",
        "report_to": _report_to(t.report_to),
        "disable_tqdm": True,
        "include_num_input_tokens_seen": "non_padding",
        "dataloader_num_workers": 0,
        "remove_unused_columns": False,
        "logging_nan_inf_filter": False,  # the HF default hides NaN losses in the logs; nova stops on them
        "torch_compile": t.torch_compile,
        **_liger(t.liger_kernels, placement),
    }
    return {**args, **(strategy.args if strategy is not None else {})}


def _liger(wanted: bool, placement: Placement) -> dict[str, Any]:
    """Liger's RMSNorm/RoPE/SwiGLU kernels when asked for; never its fused cross-entropy (nova's loss
    already projects only trained positions, and TRL refuses the fused linear cross-entropy)."""
    if not wanted:
        return {}
    import importlib.util

    from nova.errors import NovaError

    if placement.device != "cuda":
        raise NovaError("training.liger_kernels needs a CUDA GPU", hint="set it to false on this machine")
    if importlib.util.find_spec("liger_kernel") is None:
        raise NovaError("training.liger_kernels is on but liger-kernel is not installed",
                        hint="pip install 'nova-tune[liger]', or set training.liger_kernels: false")
    return {"use_liger_kernel": True,
            "liger_kernel_config": {"fused_linear_cross_entropy": False, "cross_entropy": False}}


@dataclass
class TrainerHooks:
    """Where a trainer writes and what it listens to, besides the stage config."""

    output_dir: Path
    placement: Placement
    metrics_path: Path
    stage_name: str
    label: str
    stop: StopRequest
    extra_callbacks: Sequence[Any] = ()
    strategy: Strategy | None = None


@dataclass(frozen=True)
class TrainerInputs:
    """Everything a method's trainer is built from (``build_<method>_trainer(inputs)``)."""

    model: Any  # the PeftModel with the chain stacked and "default" trainable, or the whole model (full)
    tokenizer: Any
    stage: StageConfig  # as this attempt runs it (an OOM retry halves the micro batch)
    data: Any  # nova.data.PreparedData
    hooks: TrainerHooks
    reference: StageReference  # the stage's starting point, for the methods that keep one
    say: Callable[[str], None] = print  # a line for the console log, prefixed with the stage's label
    # kept by the stage across its attempts (an OOM retry builds the trainer again): SFT's batching choice
    memo: dict[str, Any] = field(default_factory=dict)

    def args(self, **overrides: Any) -> dict[str, Any]:
        """The TrainingArguments every method shares, with the method's own on top."""
        h = self.hooks
        if h.strategy is not None:
            h.strategy.engage()
        return {**common_args(self.stage, h.output_dir, h.placement, self.data.eval is not None, h.strategy),
                **overrides}


def attach_callbacks(trainer: Any, hooks: TrainerHooks) -> Any:
    check_engine(trainer, hooks.strategy)  # the engine the config names, or a refusal
    transformers = require("transformers")
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    trainer.remove_callback(transformers.trainer_callback.ProgressCallback)
    for callback in hooks.extra_callbacks:
        trainer.add_callback(callback)
    trainer.add_callback(MetricsCallback(hooks.metrics_path, hooks.stage_name))
    trainer.add_callback(ProgressCallback(hooks.label))
    trainer.add_callback(stop_callback(hooks.stop))
    return trainer


