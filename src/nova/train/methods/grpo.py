"""The GRPO stage: the same skeleton as SFT and DPO (arguments, trainer, callbacks), on TRL 1.x's GRPOTrainer.

The model generates ``num_generations`` completions per prompt itself (TRL's default path; vLLM only
when ``grpo.use_vllm`` asks and it is installed), nova's rewards score them (nova.train.methods.rewards),
and each completion's advantage is its reward against its group's. Three things are nova's own:

- the prompts are nova's tokens (nova.data: the chat template's generation prompt, cut and counted),
  so TRL's own prompt tokenization is bypassed; the rewards get the prompt messages and each
  record's fields, with the types they had in the file;
- with ``grpo.beta`` > 0 the KL reference is the stage's true starting point (earlier phases plus
  this phase's adapter as the stage began, as for DPO and KTO), computed with exactly that
  composition active; TRL's own (all adapters off, or a "ref" copy) would be the raw base after an
  SFT phase. No second model is held;
- a step's completions are whole groups (grpo.num_generations divides micro batch x accumulation: the
  schema's rule), which auto-fit and the out-of-memory retry keep by keeping the effective batch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from nova.errors import NovaError
from nova.lazy import require
from nova.model.adapters import active_adapters
from nova.train.machinery.resilience import NovaTrainerMixin
from nova.train.methods.common import TrainerInputs, attach_callbacks
from nova.train.methods.reference import drop_reference_copy
from nova.train.methods.rewards import build_rewards


def _expand(row: dict[str, Any]) -> dict[str, Any]:
    """A dataset row as the rewards see it: the prompt messages and the record's fields (nova.data.prompts)."""
    return {**json.loads(row["record"]), "prompt_ids": list(row["prompt_ids"])}


def _nova_grpo_trainer_class() -> type:
    """GRPOTrainer on nova's tokenized prompts, with the stage's starting point as the KL reference."""
    trl = require("trl")
    torch = require("torch")
    from trl.models.utils import disable_gradient_checkpointing

    class NovaGRPOTrainer(NovaTrainerMixin, trl.GRPOTrainer):
        reference_adapters: Sequence[str] = ()

        def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
            rows = [_expand(x) for x in inputs]
            self._nova_prompt_ids = [row.pop("prompt_ids") for row in rows]
            beta, self.beta = self.beta, 0.0  # TRL's reference would be the adapters switched off
            try:
                out = super()._generate_and_score_completions(rows)
            finally:
                self.beta = beta
            if beta:
                out["ref_per_token_logps"] = self._reference_logps(out)
            return out

        def _tokenize_prompts(self, prompts: list[Any]) -> tuple[list[list[int]], None, dict[str, Any]]:
            return self._nova_prompt_ids, None, {}

        def _reference_logps(self, out: dict[str, Any]) -> Any:
            """Per-token log-probs of the completions under the stage's starting point (no gradients)."""
            ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
            mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
            peft_model = self.accelerator.unwrap_model(self.model)
            with (torch.no_grad(),
                  disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
                  active_adapters(peft_model, list(self.reference_adapters))):
                logps, _, _ = self._get_per_token_logps_and_entropies(
                    self.model, ids, mask, out["completion_ids"].size(1),
                    batch_size=self.args.per_device_train_batch_size)
            return logps

    return NovaGRPOTrainer


def _vllm(wanted: bool) -> dict[str, Any]:
    """vLLM generation when asked for and installed (never required)."""
    if not wanted:
        return {}
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise NovaError("grpo.use_vllm is on but vllm is not installed",
                        hint="pip install vllm (CUDA only), or set grpo.use_vllm: false")
    return {"use_vllm": True, "vllm_mode": "colocate"}


def build_grpo_trainer(inputs: TrainerInputs) -> Any:
    """The trainer of a grpo stage (its groups fit a step: the schema's batch rule, nova.methods.grpo)."""
    trl = require("trl")
    g, t = inputs.stage.grpo, inputs.stage.training
    rewards, weights = build_rewards(g)
    eval_batch = g.num_generations * max(1, t.micro_batch_size // g.num_generations)  # whole groups
    args = trl.GRPOConfig(
        **inputs.args(per_device_eval_batch_size=eval_batch),
        num_generations=g.num_generations,
        max_completion_length=g.max_completion_length,
        temperature=g.temperature,
        beta=g.beta,
        reward_weights=weights,
        disable_dropout=True,  # the ratio and the KL compare forwards of the same weights
        **_vllm(g.use_vllm),
    )
    cls = _nova_grpo_trainer_class()
    cls.reference_adapters = inputs.reference.adapters
    trainer = cls(model=inputs.model, reward_funcs=rewards, args=args, train_dataset=inputs.data.train,
                  eval_dataset=inputs.data.eval, processing_class=inputs.tokenizer)
    drop_reference_copy(inputs.model)  # TRL copies the adapter as "ref" when beta > 0; nova's reference is its own
    return attach_callbacks(trainer, inputs.hooks)
