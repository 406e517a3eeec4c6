"""The ``eval:`` section of a phase: tasks scored after the phase, and the gates that stop a pipeline.

Kept in its own module because ``nova.eval`` owns the tasks; the phase schema only embeds it.
A task is named as ``nova eval --tasks`` names it (a shipped suite, ``holdout``, ``preference``,
a JSONL file, ``lm:...``; docs/eval.md). Nothing here changes what is trained, so it is not part
of a run's fingerprint: a gate can be tightened or relaxed without retraining.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from nova.config.base import MAX_RECORDS, Section


class EvalTaskConfig(Section):
    """One task scored after the phase, with optional limits (a gate)."""

    task: str = Field(min_length=1, max_length=4096, description="A task as nova eval --tasks names it: a shipped "
                      "suite (xquad_ro, hellaswag, gsm8k), holdout, preference, a .jsonl file of your own, or "
                      "lm:TASK / lm:FILE.yaml (lm-evaluation-harness); see docs/eval.md.")
    max_drop: float | None = Field(
        None, ge=0, le=1_000_000, description="Stop the pipeline when the task's score is worse than the one "
        "'against' by more than this, in the task's own units (accuracy 0.05 = 5 points; for a loss, a rise).")
    min: float | None = Field(
        None, ge=-1_000_000, le=1_000_000, description="Stop the pipeline when the score is worse than this (below "
        "it for an accuracy, above it for a loss).")
    against: Literal["previous", "base"] = Field(
        "previous", description="What max_drop compares with: the phase this one starts from ('previous'; the base "
        "for a first phase) or the base model ('base').")


class EvalConfig(Section):
    """Tasks scored on the phase's model when it finishes; a task past its limits stops the pipeline
    before the next phase (``nova train --force-gates`` continues, and says so in pipeline.json)."""

    tasks: list[EvalTaskConfig] = Field(default_factory=list, description="Tasks to score after the phase, "
                                        "each with optional max_drop / min limits.")
    limit: int | None = Field(50, gt=0, le=MAX_RECORDS, description="Items scored per task (the first N of each "
                              "suite, the same N for every model); null: every item.")

    @model_validator(mode="after")
    def _tasks_once(self) -> EvalConfig:
        names = [t.task for t in self.tasks]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"eval.tasks names {', '.join(repeated)} more than once; give each task once")
        return self
