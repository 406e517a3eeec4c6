"""DPO: the chosen reply over the rejected one, kept near the stage's starting point."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from nova.config.base import MAX_TOKENS, Section
from nova.methods.spec import LearningRates, MethodSpec, show_settings


class DPOConfig(Section):
    """Direct Preference Optimization settings (used by a ``dpo`` stage)."""

    beta: float = Field(0.1, gt=0, le=1000, description="Strength of the pull toward the reference model.")
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust", "bco_pair", "sppo_hard", "nca_pair",
                       "apo_zero", "apo_down"] = Field("sigmoid", description="DPO loss variant (TRL names).")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="Conservative DPO label smoothing.")
    max_prompt_length: int = Field(
        512, gt=0, le=MAX_TOKENS, description="Prompt tokens kept (the end of the prompt is kept).")
    max_completion_length: int = Field(
        512, gt=0, le=MAX_TOKENS, description="Chosen/rejected tokens kept (from the start).")


SPEC = MethodSpec(
    name="dpo",
    typical_effective_batch=8,  # pairs or groups: each record is two or more sequences
    summary="chosen over rejected replies, kept near the reference",
    records="pairs",
    paired=True,
    reference="start",
    section=DPOConfig,
    lora_lr=LearningRates(1e-6, 1e-4, 5e-6),
    full_lr=LearningRates(1e-7, 1e-5, 5e-7),  # the papers' own rates for full weights
    memory_note="DPO: chosen and rejected in one batch ({sequences} sequences per micro batch)",
    card=show_settings("beta", "loss_type", "label_smoothing"),
    trainer="nova.train.methods.dpo:build_dpo_trainer",
)
