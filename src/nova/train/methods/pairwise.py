"""ORPO and SimPO: a preference loss of nova's own on TRL's DPO path (its collator and fused LM head); no reference.

TRL 1.x keeps its own ORPO/CPO trainers in ``trl.experimental`` with a full-vocabulary logits path
and their own tokenization, so these read nova's pre-tokenized pairs through TRL's DPO trainer and
replace its loss. The two differ only in the loss of the average log-probabilities per completion
token (``orpo_loss``, ``simpo_loss``); the spec of each names its builder here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nova.lazy import require
from nova.train.methods.common import TrainerInputs, attach_callbacks
from nova.train.methods.dpo import dpo_trainer_class
from nova.train.methods.reference import drop_reference_copy, score_trained_positions_only

# (chosen, rejected, nll, section) -> (loss, reward scale, extra metrics): average log-probs per token
PairLoss = Callable[[Any, Any, Any, Any], tuple[Any, float, dict[str, Any]]]


def _log1mexp(x: Any) -> Any:
    """log(1 - exp(x)) for x < 0, stable near 0 (ORPO's odds of an average log-probability)."""
    torch = require("torch")
    return torch.log(-torch.expm1(x.clamp(max=-1e-6)))


def orpo_loss(chosen: Any, rejected: Any, nll: Any, orpo: Any) -> tuple[Any, float, dict[str, Any]]:
    """ORPO: the chosen reply's SFT loss minus beta times the log-sigmoid of the log odds ratio."""
    functional = require("torch.nn.functional")
    log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))
    ratio = functional.logsigmoid(log_odds)
    return nll - orpo.beta * ratio.mean(), orpo.beta, {"log_odds_ratio": ratio.detach().mean(),
                                                       "log_odds_chosen": log_odds.detach().mean()}


def simpo_loss(chosen: Any, rejected: Any, nll: Any, simpo: Any) -> tuple[Any, float, dict[str, Any]]:
    """SimPO: a margin gamma between beta times the average log-probabilities (plus CPO's SFT term)."""
    functional = require("torch.nn.functional")
    losses = -functional.logsigmoid(simpo.beta * (chosen - rejected) - simpo.gamma)
    loss = losses.mean() + simpo.nll_weight * nll if simpo.nll_weight else losses.mean()
    return loss, simpo.beta, {}


def _reference_free_trainer_class() -> type:
    """TRL's DPO path (nova's data, collator, fused LM head) with ORPO's or SimPO's loss: no reference."""
    torch = require("torch")

    class NovaReferenceFreeTrainer(dpo_trainer_class()):  # type: ignore[misc]
        nova_loss: PairLoss
        nova_settings: Any = None  # the method's section (orpo: or simpo:)

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
            loss, scale, extra = self.nova_loss(chosen, rejected, nll, self.nova_settings)
            self._log_preference(mode, scale * chosen.detach(), scale * rejected.detach(), chosen, rejected,
                                 {"nll_loss": nll.detach(), **extra})
            return (loss, out) if return_outputs else loss

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


def build_orpo_trainer(inputs: TrainerInputs) -> Any:
    """The trainer of an orpo stage."""
    return _build(inputs, orpo_loss)


def build_simpo_trainer(inputs: TrainerInputs) -> Any:
    """The trainer of a simpo stage."""
    return _build(inputs, simpo_loss)


def _build(inputs: TrainerInputs, loss: PairLoss) -> Any:
    trl = require("trl")
    section = inputs.stage.method_settings
    args = trl.DPOConfig(
        **inputs.args(),
        max_length=section.max_prompt_length + section.max_completion_length,
        precompute_ref_log_probs=False,
        disable_dropout=True,
    )
    score_trained_positions_only()
    cls = _reference_free_trainer_class()
    cls.nova_loss = staticmethod(loss)
    cls.nova_settings = section
    trainer = cls(model=inputs.model, ref_model=None, args=args, train_dataset=inputs.data.train,
                  eval_dataset=inputs.data.eval, processing_class=inputs.tokenizer)
    drop_reference_copy(inputs.model)
    return attach_callbacks(trainer, inputs.hooks)
