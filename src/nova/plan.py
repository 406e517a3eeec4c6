"""The plan: which phases and stages a config runs, with which model, run directory and chain.

``make_plan`` is the one place a loaded config becomes that list. Training, ``--dry-run``,
preflight and ``nova data`` all read it, so they agree on run directories and on how a stage
is named: ``<phase>/<stage>`` (``doica/sft``, ``sora/dpo``, ``sora/sft-2``) everywhere.

A single phase file runs as a one-phase pipeline writing to the phase's own run directory.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from nova.config.load import LoadedConfig
from nova.config.schema import DistributedConfig, LoraConfig, ModelConfig, PhaseConfig, PipelineConfig, StageConfig
from nova.errors import NovaError
from nova.runs.layout import PIPELINE, RunDir, stage_label, stage_names
from nova.runs.record import AdapterRef


@dataclass(frozen=True)
class PlannedStage:
    """One stage of a phase: its directory name, its label, its config."""

    index: int
    name: str  # sft, dpo, sft-2: names stages/<name>/ and checkpoints/<name>/
    label: str  # <phase>/<name>
    config: StageConfig
    keys: str = ""  # where its keys are in the config, for messages: "stages[1]." ("": at the phase level)

    @property
    def method(self) -> str:
        return self.config.method


@dataclass(frozen=True)
class PlannedPhase:
    """One phase to run: its config, base model, run directory and the earlier phases it stacks on."""

    phase: PhaseConfig
    model: ModelConfig
    run: RunDir
    chain: tuple[tuple[str, RunDir], ...]  # earlier phases of its chain whose adapters it stacks, oldest first
    stages: tuple[PlannedStage, ...]
    # the chain's last full fine-tuning phase: its model directory is this phase's base (and the chain
    # holds only the LoRA phases after it)
    start_model: tuple[str, RunDir] | None = None
    chain_loras: tuple[LoraConfig, ...] = ()  # the LoRA settings of the chain's adapters (memory, auto-fit)

    @property
    def full(self) -> bool:
        """This phase trains every weight (adapter: full) instead of a LoRA adapter."""
        return self.phase.adapter == "full"

    @property
    def earlier(self) -> tuple[tuple[str, RunDir], ...]:
        """Every earlier phase this one builds on, oldest first: the full phase it starts from (if any), then
        the chain (what replay and the forgetting table read; only the chain's adapters are stacked)."""
        return ((self.start_model,) if self.start_model is not None else ()) + self.chain

    @property
    def base_model(self) -> ModelConfig:
        """The model this phase loads: the configured base, or the full phase's output it starts from."""
        if self.start_model is None:
            return self.model
        return self.model.changed(base=str(self.start_model[1].model_dir), revision=None)

    @property
    def name(self) -> str:
        return self.phase.name

    @property
    def run_dir(self) -> Path:
        return self.run.path

    def chain_refs(self) -> list[AdapterRef]:
        """The earlier phases' adapters (their run directories, and the full phase's this phase starts from,
        must be complete)."""
        if self.start_model is not None and not self.start_model[1].is_complete:
            name, run = self.start_model
            raise NovaError(f"phase '{name}' has not finished: no complete model in {run.path}",
                            hint=f"train it first (nova train --config PIPELINE --phase {name})")
        refs = []
        for name, run in self.chain:
            if not run.is_complete:
                raise NovaError(f"phase '{name}' has not finished: no complete adapter in {run.path}",
                                hint=f"train it first (nova train --config PIPELINE --phase {name})")
            refs.append(AdapterRef(name, run.adapter))
        return refs


@dataclass(frozen=True)
class Plan:
    """Every phase a config runs, in order."""

    config_path: Path
    pipeline: PipelineConfig
    is_pipeline: bool
    phases: tuple[PlannedPhase, ...]

    @property
    def state_path(self) -> Path | None:
        """pipeline.json of a pipeline run (a single phase has none)."""
        return Path(self.pipeline.output_dir) / PIPELINE if self.is_pipeline else None

    @property
    def distributed(self) -> DistributedConfig:
        """How many ranks and which engine (the pipeline's section, or the single phase's)."""
        return self.pipeline.distributed

    @property
    def stage_count(self) -> int:
        return sum(len(p.stages) for p in self.phases)

    def select(self, only: str | None) -> Plan:
        """Only the phase named ``only`` (None: all)."""
        if only is None:
            return self
        names = [p.name for p in self.phases]
        if only not in names:
            import difflib

            close = difflib.get_close_matches(only, names, n=1, cutoff=0.6)
            raise NovaError(f"no phase named '{only}' in this config" + (f" (did you mean '{close[0]}'?)" if close
                                                                         else ""), hint=f"phases: {', '.join(names)}")
        return replace(self, phases=tuple(p for p in self.phases if p.name == only))


def resolve_strategy(strategy: str, world: int, replica_fits: bool | None) -> str:
    """The distributed engine for ``world`` ranks: 'single' in one process, else the configured one
    ('auto': ddp unless the memory estimate says a replica does not fit a GPU, then fsdp)."""
    if world <= 1:
        return "single"
    if strategy != "auto":
        return strategy
    return "fsdp" if replica_fits is False else "ddp"


def planned_stages(phase: PhaseConfig) -> tuple[PlannedStage, ...]:
    stages = phase.stages
    names = stage_names([s.method for s in stages])
    return tuple(PlannedStage(i, n, stage_label(phase.name, n), s, f"stages[{i}]." if len(stages) > 1 else "")
                 for i, (n, s) in enumerate(zip(names, stages, strict=True)))


def as_pipeline(loaded: LoadedConfig) -> tuple[PipelineConfig, bool]:
    """A pipeline config as it is; a phase config as a one-phase pipeline (is_pipeline False)."""
    if isinstance(loaded.config, PipelineConfig):
        return loaded.config, True
    phase = loaded.config
    if phase.start_from is not None:
        raise NovaError(f"phase '{phase.name}' sets start_from, which only works inside a pipeline config",
                        hint="list both phases under 'phases:' in a pipeline file, and use that file")
    # Validated already; a pipeline built around it must not re-judge the phase's own distributed section.
    return PipelineConfig.model_construct(output_dir=str(phase.run_dir.parent), phases=[phase],
                                          distributed=phase.distributed), False


def make_plan(loaded: LoadedConfig) -> Plan:
    """The phases and stages of a loaded config, with their models, run directories and chains."""
    pipeline, is_pipeline = as_pipeline(loaded)
    phases = []
    for phase in pipeline.phases:
        run = RunDir(pipeline.phase_dir(phase.name) if is_pipeline else phase.run_dir)
        chain = tuple((p.name, RunDir(pipeline.phase_dir(p.name))) for p in pipeline.chain(phase.name)[:-1])
        full = pipeline.last_full(phase.name)
        start = None
        if full is not None:  # the full phase's model is the new base; only the LoRA phases after it stack
            start = (full, RunDir(pipeline.phase_dir(full)))
            chain = chain[[name for name, _ in chain].index(full) + 1:]
        loras = tuple(pipeline.phase(name).lora for name, _ in chain)
        phases.append(PlannedPhase(phase, pipeline.model_for(phase.name), run, chain, planned_stages(phase), start,
                                   loras))
    return Plan(loaded.path, pipeline, is_pipeline, tuple(phases))
