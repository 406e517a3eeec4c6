"""KTO: single replies marked good or bad, kept near the stage's starting point."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from nova.methods.lengths import PromptLengths
from nova.methods.spec import LearningRates, MethodSpec, show_settings


class KTOConfig(PromptLengths):
    """Kahneman-Tversky Optimization settings (used by a ``kto`` stage): single replies marked good or bad."""

    beta: float = Field(0.1, gt=0, le=1000, description="Strength of the pull toward the reference (the stage's "
                        "starting point, as for DPO).")
    loss_type: Literal["kto", "apo_zero_unpaired"] = Field(
        "kto", description="'kto': the KTO paper's loss, with a KL estimate from mismatched pairs of one micro "
        "batch (so training.micro_batch_size must be at least 2); 'apo_zero_unpaired': APO-zero, no KL term.")
    desirable_weight: float = Field(
        1.0, gt=0, le=1000, description="Weight of the loss on good replies (label: true). With unequal counts, "
        "keep desirable_weight x good / (undesirable_weight x bad) between 1 and 4/3 (KTO paper, eq. 8).")
    undesirable_weight: float = Field(
        1.0, gt=0, le=1000, description="Weight of the loss on bad replies (label: false).")

    @property
    def pairs_replies(self) -> bool:
        """The KL term pairs each prompt with another reply of the same micro batch."""
        return self.loss_type == "kto"


def min_micro_batch(section: KTOConfig) -> int:
    """KTO's KL estimate needs two replies in a micro batch."""
    return 2 if section.pairs_replies else 1


def batch_problem(section: KTOConfig, micro_batch_size: int, accumulation: int) -> str | None:
    """KTO's KL estimate pairs each prompt with another reply of the same micro batch."""
    if micro_batch_size >= min_micro_batch(section):
        return None
    return (f"method kto needs training.micro_batch_size of at least 2 (it is {micro_batch_size}): its KL term "
            "pairs each prompt with another reply of the micro batch; raise it, or set kto.loss_type: "
            "apo_zero_unpaired")


SPEC = MethodSpec(
    name="kto",
    summary="good replies up, bad ones down (unpaired feedback), kept near the reference",
    records="feedback",
    reference="start",
    section=KTOConfig,
    lora_lr=LearningRates(1e-6, 1e-4, 5e-6),
    full_lr=LearningRates(1e-7, 1e-5, 1e-6),  # the papers' rates for full weights: 5e-7..5e-6
    batch_problem=batch_problem,
    min_micro_batch=min_micro_batch,
    memory_note="KTO: the KL batch (each prompt with a neighbour's reply) runs without gradients",
    card=show_settings("beta", "loss_type", "desirable_weight", "undesirable_weight"),
    trainer="nova.train.methods.kto:build_kto_trainer",
)
