"""The KTO trainer: TRL's KTOTrainer on nova's tokenized feedback, DPO's reference (the stage's starting point).

Its reference log-probs are computed on each micro batch with exactly the reference composition
active (as DPO's, nova.train.methods.reference), so no second model is held. The KL term pairs each
prompt with its neighbour's reply in the micro batch (TRL's construction), so the data is read in
a seeded order and a micro batch holds at least two replies (the schema's batch rule, nova.methods.kto).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nova.lazy import require
from nova.model.adapters import active_adapters
from nova.train.machinery.resilience import NovaTrainerMixin
from nova.train.methods.common import TrainerInputs, attach_callbacks
from nova.train.methods.reference import drop_reference_copy, live_reference_logps, score_trained_positions_only


def _completion_logps(model: Any, inputs: dict[str, Any], prefix: str = "") -> Any:
    """Summed log-probs of the completion tokens of ``{prefix}input_ids`` (TRL's fused LM head)."""
    ids, mask = inputs[f"{prefix}input_ids"], inputs[f"{prefix}completion_mask"]
    out = model(input_ids=ids, attention_mask=inputs[f"{prefix}attention_mask"],
                labels=ids.masked_fill(mask == 0, -100), use_cache=False, fused_lm_head=True)
    return out.log_probs[:, -(ids.size(1) - 1):].sum(-1)


def _rotate_completions(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """KTO's KL term pairs each prompt with the completion of its neighbour in the micro batch
    (TRL's construction: (x1, y_n), (x2, y1), ...), so its estimate uses the batch's own replies."""
    completions = batch["completion_ids"]
    batch["KL_completion_ids"] = [completions[-1], *completions[:-1]]
    return batch


def _nova_kto_trainer_class() -> type:
    """KTOTrainer on nova's tokenized data, with the reference log-probs of the stage's starting point."""
    trl = require("trl")
    torch = require("torch")
    from trl.models.utils import disable_gradient_checkpointing

    class NovaKTOTrainer(NovaTrainerMixin, trl.KTOTrainer):
        reference_adapters: Sequence[str] = ()
        live_reference: bool = False

        def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool) -> Any:
            if self.live_reference:  # on this very micro batch, as DPO's (nova.train.methods.reference)
                logps, kl = self.compute_ref_log_probs(model, inputs)
                inputs = {**inputs, "ref_logps": logps, **({"ref_KL_logps": kl} if kl is not None else {})}
            return super()._compute_loss(model, inputs, return_outputs)

        def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
            if "prompt_ids" not in dataset.column_names:
                return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            if not self.calculate_KL or "KL_completion_ids" in dataset.column_names:
                return dataset
            return dataset.map(_rotate_completions, batched=True, batch_size=args.per_device_train_batch_size)

        def compute_ref_log_probs(self, model: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
            peft_model = self.accelerator.unwrap_model(self.model)
            with (torch.no_grad(),
                  disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
                  active_adapters(peft_model, list(self.reference_adapters)),
                  self.accelerator.autocast()):
                logps = _completion_logps(model, inputs)
                kl = _completion_logps(model, inputs, "KL_") if self.calculate_KL else None
            return logps, kl

    return NovaKTOTrainer


def build_kto_trainer(inputs: TrainerInputs) -> Any:
    """The trainer of a kto stage."""
    trl = require("trl")
    k, t, data, reference = inputs.stage.kto, inputs.stage.training, inputs.data, inputs.reference
    args = trl.KTOConfig(
        **inputs.args(),
        beta=k.beta,
        loss_type=k.loss_type,
        desirable_weight=k.desirable_weight,
        undesirable_weight=k.undesirable_weight,
        max_length=k.max_prompt_length + k.max_completion_length,
        precompute_ref_log_probs=not reference.live,  # adapters: live, on each micro batch (as DPO)
        disable_dropout=True,
    )
    score_trained_positions_only()
    # KTO reads its data in order (the KL pairs are neighbours): a seeded shuffle keeps a file sorted by
    # label from giving micro batches of one kind, and the same order on every resume.
    train = data.train.shuffle(seed=t.seed).flatten_indices()
    evals = data.eval.shuffle(seed=t.seed).flatten_indices() if data.eval is not None else None
    cls = _nova_kto_trainer_class()
    cls.reference_adapters = reference.adapters
    trainer = cls(model=inputs.model, ref_model=None, args=args, train_dataset=train, eval_dataset=evals,
                  processing_class=inputs.tokenizer)
    live_reference_logps(trainer, reference.live)
    drop_reference_copy(inputs.model)
    return attach_callbacks(trainer, inputs.hooks)
