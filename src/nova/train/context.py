"""What a phase and its stages run with, and what they return: shared by phase.py and stage.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nova.config.schema import DistributedConfig, ModelConfig, PhaseConfig
from nova.console import RunLog
from nova.plan import PlannedPhase, PlannedStage
from nova.runs.fingerprint import Fingerprint
from nova.runs.layout import RunDir
from nova.runs.record import AdapterRef
from nova.train.distributed import Ranks
from nova.train.resilience import StopRequest

if TYPE_CHECKING:
    from nova.data import PreparedData
    from nova.model.loading import Placement

STAGE_REF = "stage_start"  # frozen copy of the phase adapter as it was when a later stage began


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


@dataclass
class PhaseContext:
    """Everything a phase run needs that is not in its config."""

    planned: PlannedPhase
    chain: list[AdapterRef]  # the earlier phases' adapters, checked complete
    log: RunLog
    resume: bool = True
    stop: StopRequest = field(default_factory=StopRequest)
    rerun_hint: str = "rerun the same nova train command"
    extra_callbacks: list[Any] = field(default_factory=list)
    resume_with_changes: bool = False  # the learning rate and max_steps may differ from the checkpoint's
    fingerprints: list[Fingerprint] = field(default_factory=list)  # per stage, set before anything trains
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)  # per stage: applied --resume-with-changes
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


@dataclass
class StageRun:
    """One stage's inputs on the training path: the phase, the loaded model, the prepared data."""

    ctx: PhaseContext
    stage: PlannedStage
    model: Any  # the PeftModel with the chain stacked and "default" trainable
    tokenizer: Any
    placement: Placement
    data: PreparedData
    last_step: int = 0  # the trainer's global step when an attempt ended (for OOM messages)
    batching: Any = None  # nova.train.trainers.SFTBatching, chosen at the stage's first attempt

    @property
    def label(self) -> str:
        return self.stage.label

    @property
    def fingerprint(self) -> Fingerprint:
        return self.ctx.fingerprints[self.stage.index]

    @property
    def lr_override(self) -> float | None:
        """The new peak learning rate when this stage resumes with --resume-with-changes."""
        change = self.ctx.changes.get(self.stage.name, {}).get("training.learning_rate")
        return float(change[1]) if change else None

    @property
    def reference_adapters(self) -> list[str]:
        """The DPO reference: earlier phases, plus this phase's adapter as it was when the stage began."""
        names = [r.name for r in self.ctx.chain]
        if self.ctx.planned.full:  # the weights as the stage starts, precomputed before its first step
            return []
        return [*names, STAGE_REF] if self.stage.index > 0 else names
