"""The DPO trainer: TRL's DPOTrainer on nova's tokenized pairs, its reference the stage's starting point."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nova.lazy import require
from nova.model.adapters import active_adapters
from nova.train.machinery.resilience import NovaTrainerMixin
from nova.train.methods.common import TrainerInputs, attach_callbacks
from nova.train.methods.reference import drop_reference_copy, live_reference_logps, score_trained_positions_only


def dpo_trainer_class() -> type:
    """DPOTrainer with nova's data preparation and its reference, the stage's true starting point, scored
    with exactly that composition active (nova.train.methods.reference): live on each micro batch with
    adapters, precomputed from the weights with full fine-tuning."""
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


def build_dpo_trainer(inputs: TrainerInputs) -> Any:
    """The trainer of a dpo stage."""
    trl = require("trl")
    d, reference = inputs.stage.dpo, inputs.reference
    args = trl.DPOConfig(
        **inputs.args(),
        beta=d.beta,
        loss_type=[d.loss_type],
        label_smoothing=d.label_smoothing,
        max_length=d.max_prompt_length + d.max_completion_length,
        precompute_ref_log_probs=not reference.live,
        disable_dropout=True,
    )
    score_trained_positions_only()
    cls = dpo_trainer_class()
    cls.reference_adapters = reference.adapters
    trainer = cls(model=inputs.model, ref_model=None, args=args, train_dataset=inputs.data.train,
                  eval_dataset=inputs.data.eval, processing_class=inputs.tokenizer)
    live_reference_logps(trainer, reference.live)
    drop_reference_copy(inputs.model)
    return attach_callbacks(trainer, inputs.hooks)
