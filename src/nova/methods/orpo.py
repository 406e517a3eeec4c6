"""ORPO: SFT on the chosen reply plus an odds-ratio push away from the rejected one; no reference."""

from __future__ import annotations

from pydantic import Field

from nova.methods.lengths import PromptLengths
from nova.methods.spec import LearningRates, MethodSpec, show_settings


class ORPOConfig(PromptLengths):
    """Odds Ratio Preference Optimization settings (an ``orpo`` stage): SFT on the chosen reply plus an
    odds-ratio term against the rejected one; no reference model."""

    beta: float = Field(0.1, gt=0, le=100, description="Weight of the odds-ratio term beside the chosen reply's "
                        "SFT loss (lambda in the ORPO paper; 0.1 to 1.0 is usual).")


SPEC = MethodSpec(
    name="orpo",
    typical_effective_batch=8,  # pairs or groups: each record is two or more sequences
    summary="SFT on chosen plus an odds-ratio push away from rejected",
    records="pairs",
    paired=True,
    section=ORPOConfig,
    lora_lr=LearningRates(1e-6, 5e-4, 5e-5),
    memory_note="ORPO: chosen and rejected in one batch ({sequences} sequences per micro batch)",
    card=show_settings("beta"),
    trainer="nova.train.methods.pairwise:build_orpo_trainer",
)
