"""Build TRL trainers for a stage. SFT and DPO share one skeleton: arguments, trainer, callbacks.

nova tokenizes the data itself (``nova.data``: masks from the chat template, every drop
counted), so both trainers receive pre-tokenized datasets and skip TRL's own preparation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nova.config.schema import StageConfig
from nova.lazy import require
from nova.model.adapters import active_adapters
from nova.model.loading import Placement
from nova.model.trained import is_full
from nova.train.batching import SFTCollator, TokenBudgetBatchSampler, packing_is_exact
from nova.train.callbacks import MetricsCallback, ProgressCallback
from nova.train.loss import sft_loss
from nova.train.resilience import NovaTrainerMixin, StopRequest, stop_callback
from nova.train.strategy import Strategy


def _report_to(targets: Sequence[str]) -> list[str] | str:
    """TensorBoard / W&B when asked for and installed (a missing one is an error, not a silent skip)."""
    import importlib.util

    from nova.errors import NovaError

    package = {"tensorboard": "tensorboard", "wandb": "wandb"}
    for target in targets:
        if importlib.util.find_spec(package[target]) is None:
            raise NovaError(f"training.report_to includes '{target}' but it is not installed",
                            hint=f"pip install '.[{target}]' or remove it from report_to")
    return list(targets) or "none"


def common_args(stage: StageConfig, output_dir: Path, placement: Placement, has_eval: bool,
                strategy: Strategy | None = None) -> dict[str, Any]:
    """TrainingArguments shared by SFT and DPO, from the stage's ``training:`` section and the
    distributed strategy's own arguments (nova.train.strategy)."""
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


def _attach_callbacks(trainer: Any, hooks: TrainerHooks) -> Any:
    transformers = require("transformers")
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    trainer.remove_callback(transformers.trainer_callback.ProgressCallback)
    for callback in hooks.extra_callbacks:
        trainer.add_callback(callback)
    trainer.add_callback(MetricsCallback(hooks.metrics_path, hooks.stage_name))
    trainer.add_callback(ProgressCallback(hooks.label))
    trainer.add_callback(stop_callback(hooks.stop))
    return trainer


def _sft_trainer_class() -> type:
    """SFTTrainer with nova's collation (padding-free where exact), loss and optional token budgets."""
    trl = require("trl")

    class NovaSFTTrainer(NovaTrainerMixin, trl.SFTTrainer):
        nova_batch_sampler: Any = None

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            """nova.train.loss.sft_loss: the LM head only where the loss is, normalized over the window."""
            loss = sft_loss(model, inputs, num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # DDP averages; the count is over every rank
            return (loss, {"loss": loss}) if return_outputs else loss

        def get_train_dataloader(self) -> Any:
            if self.nova_batch_sampler is None:
                return super().get_train_dataloader()
            torch = require("torch")
            loader = torch.utils.data.DataLoader(self.train_dataset, batch_sampler=self.nova_batch_sampler,
                                                 collate_fn=self.data_collator, num_workers=0)
            return self.accelerator.prepare(loader)

    return NovaSFTTrainer


def build_sft_trainer(model: Any, tokenizer: Any, stage: StageConfig, data: Any, hooks: TrainerHooks,
                      batching: SFTBatching) -> Any:
    trl = require("trl")
    t = stage.training
    args = trl.SFTConfig(
        **{**common_args(stage, hooks.output_dir, hooks.placement, data.eval is not None, hooks.strategy),
           # every token of a padding-free row is real (pad == eos would otherwise not be counted)
           "include_num_input_tokens_seen": "all" if batching.padding_free else "non_padding"},
        max_length=None,  # nova.data already applied data.max_length (truncate or drop, counted)
        dataset_kwargs={"skip_prepare_dataset": True},
        packing=False,
        train_sampling_strategy="group_by_length" if t.group_by_length and not batching.padding_free
        and batching.sampler is None else "random",
        prediction_loss_only=True,
    )
    collator = SFTCollator(tokenizer.pad_token_id, batching.padding_free, batching.max_row_tokens)
    trainer = _sft_trainer_class()(model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
                                   processing_class=tokenizer, data_collator=collator)
    trainer.nova_batch_sampler = batching.sampler
    trainer.model_accepts_loss_kwargs = True  # sft_loss takes num_items_in_batch: the Trainer counts the window
    trainer._loss_shifts_labels = True  # and counts labels[..., 1:], the positions sft_loss predicts
    return _attach_callbacks(trainer, hooks)


# Attention kernels that take packed boundaries as sequence lengths: no mask, no cross-sequence scores,
# so a micro batch can be one row (nova.model.attention's per-sequence SDPA is one of them). Kernels
# with an explicit mask (eager) score every pair of a row: there rows are cut at data.max_length, so
# packing never costs more attention than padding (measured on long chats: one 1600-token masked row
# was 11% slower than TRL's 4 padded rows of 460).
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "nova_sdpa_varlen")  # nova.model.attention.VARLEN_SDPA


@dataclass(frozen=True)
class SFTBatching:
    """How a stage's SFT micro batches are built (chosen once per stage, see choose_batching)."""

    padding_free: bool
    sampler: Any = None  # TokenBudgetBatchSampler when training.max_tokens_per_batch is set
    note: str = ""
    max_row_tokens: int | None = None  # longest padding-free row (None: one row, varlen attention)


def _exact_packing(model: Any, placement: Placement) -> tuple[bool, float, str]:
    """Is packing exact on ``model``, and with which attention: SDPA becomes nova's per-sequence SDPA
    (no rows x rows mask, one row per micro batch) where that is exact, else stays masked SDPA."""
    from nova.model.attention import VARLEN_SDPA, switch_attention, varlen_candidate

    vocab = model.config.vocab_size
    original = getattr(model.config, "_attn_implementation", None)
    if varlen_candidate(original):
        switch_attention(model, VARLEN_SDPA)
        exact, diff = packing_is_exact(model, vocab, placement.dtype_name)
        if exact:
            return True, diff, "per-sequence SDPA"
        switch_attention(model, original)
    exact, diff = packing_is_exact(model, vocab, placement.dtype_name)
    how = "varlen" if original in VARLEN_ATTENTION else "with a block-diagonal mask"
    return exact, diff, f"{original} {how}"


def choose_batching(model: Any, stage: StageConfig, data: Any, placement: Placement) -> SFTBatching:
    """Padding-free where the model provably isolates packed sequences (training.packing: auto), else pad."""
    from nova.errors import NovaError

    t = stage.training
    padding_free = False
    note = "padded batches (training.packing: pad)"
    if t.packing != "pad":
        exact, diff, how = _exact_packing(model, placement)
        if exact:
            padding_free, note = True, f"padding-free packing ({how}; checked exact on this model)"
        elif t.packing == "padding_free":
            raise NovaError(f"training.packing is padding_free, but this model does not keep packed sequences "
                            f"apart (logits differ by {diff:.3g})", hint="set training.packing: auto or pad")
        else:
            note = f"padded batches: this model does not keep packed sequences apart (logits differ by {diff:.3g})"
    sampler = None
    if t.max_tokens_per_batch is not None:
        lengths = [len(ids) for ids in data.train["input_ids"]]
        sampler = TokenBudgetBatchSampler(lengths, t.max_tokens_per_batch, seed=t.seed, padding_free=padding_free)
        s = sampler.summary()
        note += (f"; micro batches of up to {t.max_tokens_per_batch} tokens ({s['batches_per_epoch']} per epoch, "
                 f"{s['sequences_per_batch_mean']} sequences on average)")
    varlen = getattr(model.config, "_attn_implementation", None) in VARLEN_ATTENTION
    max_row = None if varlen else stage.data.max_length
    return SFTBatching(padding_free, sampler, note, max_row)


def score_trained_positions_only() -> None:
    """Make TRL's fused LM head (DPO, reference log-probs) project only positions that carry loss.

    TRL 1.x gathers the trained positions on Triton GPUs but scores every position elsewhere (CPU
    included) so that compilers for other accelerators see static tile shapes; nova never compiles
    there, so it gathers everywhere: the same log-probs (zeros elsewhere), without the LM head on
    prompt tokens. Only the gather decision is changed; the kernel choice inside TRL is untouched.
    """
    import trl.trainer.utils as trl_utils

    if hasattr(trl_utils, "_use_triton"):
        trl_utils._use_triton = lambda device: True


def _nova_dpo_trainer_class() -> type:
    """DPOTrainer with nova's data preparation and a reference that is the stage's true starting point.

    TRL (1.16) takes the reference of a PEFT policy by disabling *all* adapters (or switching to
    one adapter named "ref"). With stacked phases that is the raw base, which is the bug
    LLaMA-Factory has (their issue #8459): DPO would pull the model back to its pre-SFT self.
    Here the reference log-probs are computed with exactly the reference composition active
    (earlier phases plus a frozen copy of this phase's adapter as it was when DPO began), so no
    second model copy is held.

    They are computed live, on the very micro batch the policy scores (``live_reference``), not
    precomputed over the dataset in other batches: in bf16 a kernel's rounding depends on the batch
    shape (padding, rows, AMX/oneDNN and cuBLAS tile choices), and a reference scored in other
    batches differed from the policy by a margin of 0.008 before any update (measured on an AMX
    CPU), as large as what a short run on real preference pairs learns. On the same batch the policy
    at step 0 equals its reference exactly. It costs one forward without gradients per micro batch,
    the work the precomputation did once per example. Full fine-tuning keeps the precomputation:
    its reference weights are gone once training starts.
    """
    trl = require("trl")
    torch = require("torch")
    from trl.models.utils import disable_gradient_checkpointing

    class NovaDPOTrainer(NovaTrainerMixin, trl.DPOTrainer):
        reference_adapters: Sequence[str] = ()
        live_reference: bool = False

        def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool) -> Any:
            if self.live_reference:  # TRL then reads them from the batch (see live_reference_logps)
                chosen, rejected = self.compute_ref_log_probs(model, inputs)
                inputs = {**inputs, "ref_chosen_logps": chosen, "ref_rejected_logps": rejected}
            return super()._compute_loss(model, inputs, return_outputs)

        def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
            if "prompt_ids" in dataset.column_names:  # tokenized, truncated and counted by nova.data
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

        def compute_ref_log_probs(self, model: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
            skip = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}
            kwargs = {k: v for k, v in inputs.items() if k not in skip}
            kwargs["use_cache"] = False
            labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
            peft_model = self.accelerator.unwrap_model(self.model)
            with (torch.no_grad(),
                  disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
                  active_adapters(peft_model, list(self.reference_adapters)),
                  self.accelerator.autocast()):
                per_token = model(**kwargs, labels=labels, fused_lm_head=True).log_probs
            mask = inputs["completion_mask"][..., 1:]
            logps = per_token[:, -mask.size(1):].sum(dim=1)
            return logps.chunk(2, dim=0)

    return NovaDPOTrainer


def build_dpo_trainer(model: Any, tokenizer: Any, stage: StageConfig, data: Any, hooks: TrainerHooks,
                      reference_adapters: Sequence[str]) -> Any:
    trl = require("trl")
    d = stage.dpo
    live = not is_full(model)
    args = trl.DPOConfig(
        **common_args(stage, hooks.output_dir, hooks.placement, data.eval is not None, hooks.strategy),
        beta=d.beta,
        loss_type=[d.loss_type],
        label_smoothing=d.label_smoothing,
        max_length=d.max_prompt_length + d.max_completion_length,
        precompute_ref_log_probs=not live,
        disable_dropout=True,
    )
    score_trained_positions_only()
    cls = _nova_dpo_trainer_class()
    cls.reference_adapters = tuple(reference_adapters)
    trainer = cls(model=model, ref_model=None, args=args, train_dataset=data.train, eval_dataset=data.eval,
                  processing_class=tokenizer)
    live_reference_logps(trainer, live)
    drop_reference_copy(model)
    return _attach_callbacks(trainer, hooks)


def live_reference_logps(trainer: Any, live: bool) -> None:
    """Score the reference on each micro batch as the policy is scored (DPO, KTO with adapters).

    The trainer was built without TRL's precomputation; TRL's flag is then set so that its loss reads
    the reference log-probs from the batch, where nova's ``_compute_loss`` puts them just before.
    """
    trainer.live_reference = live
    if live:
        trainer.precompute_ref_logps = True


TRL_REFERENCE_COPY = "ref"  # the adapter copy TRL adds when handed a PEFT model without a ref_model


def drop_reference_copy(model: Any) -> None:
    """Remove the "ref" adapter TRL copies from the trained one: nova never reads it (its reference is
    its own composition, ORPO and SimPO have none), so it would only cost memory and checkpoint space."""
    from nova.model.adapters import TRAINABLE, activate

    peft_config = getattr(model, "peft_config", {})
    if TRL_REFERENCE_COPY not in peft_config:
        return
    active = [n for n in model.base_model.active_adapters if n != TRL_REFERENCE_COPY]
    model.delete_adapter(TRL_REFERENCE_COPY)
    activate(model, active, trainable=[TRAINABLE])
