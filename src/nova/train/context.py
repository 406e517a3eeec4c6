"""What a phase and its stages run with, and what they return: frozen values passed down the run.

``PhaseRun`` is fixed when the phase starts (its plan, chain, flags, log, ranks); each step of
``nova.train.phase.run_phase`` returns its own small frozen result (``PhaseInputs``, ``PhaseData``)
that the next steps read, so nothing is edited in place while a phase runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nova.config.schema import DistributedConfig, ModelConfig, PhaseConfig
from nova.console import RunLog
from nova.model.trained import Full, Lora, StageReference, trained_kind
from nova.plan import PlannedPhase, PlannedStage
from nova.runs.fingerprint import Fingerprint
from nova.runs.layout import RunDir
from nova.runs.record import AdapterRef
from nova.train.machinery.distributed import Ranks
from nova.train.machinery.resilience import StopRequest

if TYPE_CHECKING:
    from nova.data import PreparedData
    from nova.model.loading import Placement


@dataclass
class StageResult:
    name: str
    method: str
    steps: int = 0
    seconds: float = 0.0
    train_loss: float | None = None
    eval_loss_start: float | None = None
    eval_loss_end: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class PhaseResult:
    name: str
    run_dir: Path
    adapter_dir: Path
    stages: list[StageResult]
    seconds: float
    skipped: bool = False


@dataclass(frozen=True)
class PhaseRun:
    """Everything a phase run needs that is not in its config; fixed for the whole phase."""

    planned: PlannedPhase
    chain: tuple[AdapterRef, ...]  # the earlier phases' adapters, checked complete
    log: RunLog
    resume: bool = True
    stop: StopRequest = field(default_factory=StopRequest)
    rerun_hint: str = "rerun the same nova train command"
    extra_callbacks: tuple[Any, ...] = ()
    resume_with_changes: bool = False  # the learning rate and max_steps may differ from the checkpoint's
    ranks: Ranks = field(default_factory=Ranks)  # this process's place in a distributed run
    distributed: DistributedConfig = field(default_factory=DistributedConfig)  # the run's engine settings

    @property
    def phase(self) -> PhaseConfig:
        return self.planned.phase

    @property
    def model_cfg(self) -> ModelConfig:
        """The model this phase loads (a full phase's output when the chain has one)."""
        return self.planned.base_model

    @property
    def run(self) -> RunDir:
        return self.planned.run

    @property
    def run_dir(self) -> Path:
        return self.planned.run.path

    @property
    def kind(self) -> Lora | Full:
        """What the phase trains, an adapter or every weight (nova.model.trained)."""
        return trained_kind(self.planned.full)


@dataclass(frozen=True)
class PhaseInputs:
    """What a phase is, known before any weights load: its stages as they will run, the base model's source
    and placement, the tokenizer, and each stage's fingerprint."""

    stages: tuple[PlannedStage, ...]  # the plan's, or with the accumulation a resume on other ranks needs
    source: str  # the base model's local directory or hub id, resolved
    placement: Placement
    tokenizer: Any
    fingerprints: tuple[Fingerprint, ...]  # per stage: what it trains with (nova.train.fingerprint)
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)  # per stage: --resume-with-changes applied


@dataclass(frozen=True)
class PhaseData:
    """Every stage's prepared data (earlier phases' replayed in) and the holdouts the forgetting table scores."""

    datasets: tuple[PreparedData, ...]
    holdouts: Any  # nova.train.retention.Retention


@dataclass(frozen=True)
class StageRun:
    """One stage's inputs on the training path: its phase, the loaded model, the prepared data."""

    phase: PhaseRun
    stage: PlannedStage  # as it runs (auto-fit applied)
    model: Any  # the PeftModel with the chain stacked and "default" trainable, or the whole model (full)
    tokenizer: Any
    placement: Placement
    data: PreparedData
    fingerprint: Fingerprint
    reference: StageReference
    # kept across the stage's attempts (an OOM retry builds the trainer again): the trainer's own choices
    # (SFT's batching) and the step an attempt ended at (for messages)
    memo: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.stage.label

    def say(self, message: str) -> None:
        self.phase.log.say(f"[{self.label}] {message}")
