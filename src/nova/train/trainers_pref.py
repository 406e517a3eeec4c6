"""KTO, ORPO and SimPO stages: the same skeleton as SFT and DPO (arguments, trainer, callbacks).

All three read nova's pre-tokenized data (``nova.data``: the template's own rendering, every cut
counted). KTO keeps DPO's reference: the stage's true starting point (earlier phases plus this
phase's adapter as the stage began), its log-probs computed on each micro batch with exactly that
composition active (as DPO's, nova.train.trainers), so no second model is held. ORPO and SimPO
need no reference at all: their losses are computed here on TRL's DPO path (its collator and fused
LM head, which scores only the completion positions), because TRL 1.x keeps its own ORPO/CPO
trainers in ``trl.experimental`` with a full-vocabulary logits path and their own tokenization.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nova.config.schema import StageConfig
from nova.errors import NovaError
from nova.lazy import require
from nova.model.adapters import active_adapters
from nova.model.trained import is_full
from nova.train.resilience import NovaTrainerMixin
from nova.train.trainers import (
    TrainerHooks,
    _attach_callbacks,
    _nova_dpo_trainer_class,
    common_args,
    drop_reference_copy,
    live_reference_logps,
    score_trained_positions_only,
)


def build_preference_trainer(model: Any, tokenizer: Any, stage: StageConfig, data: Any, hooks: TrainerHooks,
                             reference_adapters: Sequence[str]) -> Any:
    """The trainer of a kto, orpo or simpo stage."""
    if stage.method == "kto":
        return build_kto_trainer(model, tokenizer, stage, data, hooks, reference_adapters)
    return build_reference_free_trainer(model, tokenizer, stage, data, hooks)


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
            if self.live_reference:  # on this very micro batch, as DPO's (nova.train.trainers)
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


def build_kto_trainer(model: Any, tokenizer: Any, stage: StageConfig, data: Any, hooks: TrainerHooks,
                      reference_adapters: Sequence[str]) -> Any:
    trl = require("trl")
    k, t = stage.kto, stage.training
    if k.loss_type == "kto" and t.micro_batch_size < 2:
        raise NovaError(f"KTO needs training.micro_batch_size of at least 2 (it is {t.micro_batch_size}): its KL "
                        "term pairs each prompt with another reply of the same micro batch",
                        hint="raise micro_batch_size (lower gradient_accumulation_steps to keep the effective "
                        "batch), or use kto.loss_type: apo_zero_unpaired")
    args = trl.KTOConfig(
        **common_args(stage, hooks.output_dir, hooks.placement, data.eval is not None, hooks.strategy),
        beta=k.beta,
        loss_type=k.loss_type,
        desirable_weight=k.desirable_weight,
        undesirable_weight=k.undesirable_weight,
        max_length=k.max_prompt_length + k.max_completion_length,
        precompute_ref_log_probs=is_full(model),  # adapters: live, on each micro batch (as DPO)
        disable_dropout=True,
    )
    score_trained_positions_only()
    # KTO reads its data in order (the KL pairs are neighbours): a seeded shuffle keeps a file sorted by
    # label from giving micro batches of one kind, and the same order on every resume.
    train = data.train.shuffle(seed=t.seed).flatten_indices()
    evals = data.eval.shuffle(seed=t.seed).flatten_indices() if data.eval is not None else None
    cls = _nova_kto_trainer_class()
    cls.reference_adapters = tuple(reference_adapters)
    trainer = cls(model=model, ref_model=None, args=args, train_dataset=train, eval_dataset=evals,
                  processing_class=tokenizer)
    live_reference_logps(trainer, not is_full(model))
    drop_reference_copy(model)
    return _attach_callbacks(trainer, hooks)


def _log1mexp(x: Any) -> Any:
    """log(1 - exp(x)) for x < 0, stable near 0 (ORPO's odds of an average log-probability)."""
    torch = require("torch")
    return torch.log(-torch.expm1(x.clamp(max=-1e-6)))


def _reference_free_trainer_class() -> type:
    """TRL's DPO path (nova's data, collator, fused LM head) with ORPO's or SimPO's loss: no reference."""
    torch = require("torch")
    functional = require("torch.nn.functional")

    class NovaReferenceFreeTrainer(_nova_dpo_trainer_class()):  # type: ignore[misc]
        nova_stage: StageConfig | None = None

        def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool) -> Any:
            mode = "train" if self.model.training else "eval"
            mask = inputs["completion_mask"]
            ids = inputs["input_ids"]
            out = model(input_ids=ids, attention_mask=inputs["attention_mask"], use_cache=False,
                        labels=ids.masked_fill(mask == 0, -100), fused_lm_head=True)
            shifted = mask[..., 1:]
            sums = out.log_probs[:, -shifted.size(1):].float().sum(dim=1)
            counts = shifted.sum(dim=1).clamp(min=1).float()
            chosen_sum, _ = sums.chunk(2)
            chosen_count, _ = counts.chunk(2)
            chosen, rejected = (sums / counts).chunk(2)  # average log-prob per completion token
            nll = -chosen_sum.sum() / chosen_count.sum()
            loss, scale, extra = self._preference_loss(chosen, rejected, nll)
            self._log_preference(mode, scale * chosen.detach(), scale * rejected.detach(), chosen, rejected,
                                 {"nll_loss": nll.detach(), **extra})
            return (loss, out) if return_outputs else loss

        def _preference_loss(self, chosen: Any, rejected: Any, nll: Any) -> tuple[Any, float, dict[str, Any]]:
            """(loss, reward scale, extra metrics) of the stage's method."""
            assert self.nova_stage is not None
            if self.nova_stage.method == "orpo":
                lam = self.nova_stage.orpo.beta
                log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))
                ratio = functional.logsigmoid(log_odds)
                return nll - lam * ratio.mean(), lam, {"log_odds_ratio": ratio.detach().mean(),
                                                      "log_odds_chosen": log_odds.detach().mean()}
            s = self.nova_stage.simpo
            losses = -functional.logsigmoid(s.beta * (chosen - rejected) - s.gamma)
            loss = losses.mean() + s.nll_weight * nll if s.nll_weight else losses.mean()
            return loss, s.beta, {}

        def _log_preference(self, mode: str, chosen_rewards: Any, rejected_rewards: Any, chosen: Any,
                            rejected: Any, extra: dict[str, Any]) -> None:
            gather = self.accelerator.gather_for_metrics
            metrics = self._metrics[mode]
            margins = chosen_rewards - rejected_rewards
            metrics["rewards/chosen"].append(gather(chosen_rewards).mean().item())
            metrics["rewards/rejected"].append(gather(rejected_rewards).mean().item())
            metrics["rewards/margins"].append(gather(margins).mean().item())
            metrics["rewards/accuracies"].append(gather((margins > 0).float()).mean().item())
            metrics["logps/chosen"].append(gather(chosen.detach()).mean().item())
            metrics["logps/rejected"].append(gather(rejected.detach()).mean().item())
            for key, value in extra.items():
                metrics[key].append(gather(torch.as_tensor(value).reshape(1)).mean().item())

    return NovaReferenceFreeTrainer


def build_reference_free_trainer(model: Any, tokenizer: Any, stage: StageConfig, data: Any,
                                 hooks: TrainerHooks) -> Any:
    trl = require("trl")
    section = stage.orpo if stage.method == "orpo" else stage.simpo
    args = trl.DPOConfig(
        **common_args(stage, hooks.output_dir, hooks.placement, data.eval is not None, hooks.strategy),
        max_length=section.max_prompt_length + section.max_completion_length,
        precompute_ref_log_probs=False,
        disable_dropout=True,
    )
    score_trained_positions_only()
    cls = _reference_free_trainer_class()
    cls.nova_stage = stage
    trainer = cls(model=model, ref_model=None, args=args, train_dataset=data.train, eval_dataset=data.eval,
                  processing_class=tokenizer)
    drop_reference_copy(model)
    return _attach_callbacks(trainer, hooks)
