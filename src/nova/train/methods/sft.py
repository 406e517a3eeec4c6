"""The SFT trainer: TRL's SFTTrainer with nova's collation (padding-free where exact), loss and token budgets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nova.config.schema import StageConfig
from nova.lazy import require
from nova.model.loading import Placement
from nova.train.machinery.batching import SFTCollator, TokenBudgetBatchSampler, packing_is_exact
from nova.train.machinery.resilience import NovaTrainerMixin
from nova.train.methods.common import TrainerInputs, attach_callbacks
from nova.train.methods.loss import sft_loss


def _sft_trainer_class() -> type:
    """SFTTrainer with nova's collation (padding-free where exact), loss and optional token budgets."""
    trl = require("trl")

    class NovaSFTTrainer(NovaTrainerMixin, trl.SFTTrainer):
        nova_batch_sampler: Any = None

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            """nova.train.methods.loss.sft_loss: the LM head only where the loss is, normalized over the window."""
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


def build_sft_trainer(inputs: TrainerInputs) -> Any:
    """The trainer of an sft stage; its batching is chosen once per stage (an OOM retry keeps it)."""
    trl = require("trl")
    model, tokenizer, stage, data = inputs.model, inputs.tokenizer, inputs.stage, inputs.data
    batching = inputs.memo.get("batching")
    if batching is None:
        batching = inputs.memo["batching"] = choose_batching(model, stage, data, inputs.hooks.placement)
        inputs.say(batching.note)
    t = stage.training
    args = trl.SFTConfig(
        # every token of a padding-free row is real (pad == eos would otherwise not be counted)
        **inputs.args(include_num_input_tokens_seen="all" if batching.padding_free else "non_padding"),
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
    return attach_callbacks(trainer, inputs.hooks)


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
    from nova.data.tokens import row_lengths
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
        lengths = row_lengths(data.train)
        sampler = TokenBudgetBatchSampler(lengths, t.max_tokens_per_batch, seed=t.seed, padding_free=padding_free)
        s = sampler.summary()
        note += (f"; micro batches of up to {t.max_tokens_per_batch} tokens ({s['batches_per_epoch']} per epoch, "
                 f"{s['sequences_per_batch_mean']} sequences on average)")
    varlen = getattr(model.config, "_attn_implementation", None) in VARLEN_ATTENTION
    max_row = None if varlen else stage.data.max_length
    return SFTBatching(padding_free, sampler, note, max_row)


