"""SimPO: a length-normalized margin of the chosen reply over the rejected one; no reference."""

from __future__ import annotations

from pydantic import Field

from nova.methods.lengths import PromptLengths
from nova.methods.spec import LearningRates, MethodSpec, show_settings


class SimPOConfig(PromptLengths):
    """SimPO settings (a ``simpo`` stage): a margin between the chosen and rejected replies' average
    log-probability per token; no reference model."""

    beta: float = Field(2.0, gt=0, le=100, description="Scale of the reward, the average log-probability per "
                        "token (SimPO paper: 2.0 to 2.5).")
    gamma: float = Field(1.0, ge=0, le=100, description="Target reward margin (SimPO paper: gamma / beta about "
                         "0.5).")
    nll_weight: float = Field(0.0, ge=0, le=100, description="Weight of an SFT loss on the chosen reply: 0 is "
                              "SimPO, 1.0 is CPO-SimPO.")


SPEC = MethodSpec(
    name="simpo",
    typical_effective_batch=8,  # pairs or groups: each record is two or more sequences
    summary="a length-normalized margin of chosen over rejected",
    records="pairs",
    paired=True,
    section=SimPOConfig,
    lora_lr=LearningRates(1e-7, 1e-4, 5e-6),
    memory_note="SIMPO: chosen and rejected in one batch ({sequences} sequences per micro batch)",
    card=show_settings("beta", "gamma", "nll_weight"),
    trainer="nova.train.methods.pairwise:build_simpo_trainer",
)
