"""The names of everything ``nova train`` writes, and a run directory that spells its paths.

One place owns the layout, so train, monitor, status, merge, infer and export agree on it::

    <pipeline output_dir>/pipeline.json         each phase's status, times and paths
    <run_dir>/config.yaml                       the resolved config (what the weights were trained with)
    <run_dir>/metrics.jsonl, alerts.jsonl, recoveries.jsonl, smoke.jsonl, retention.json, eval.json,
                                                nova.pid, nova.lock, activity.json, plots/loss.png
    <run_dir>/checkpoints/<stage>/checkpoint-N/ sealed checkpoints
    <run_dir>/stages/<stage>/adapter/, DONE, data_report.json
    <run_dir>/adapter/                          the phase's final adapter
    <run_dir>/stages/<stage>/model/, <run_dir>/model/   the same for a full fine-tuning phase (adapter: full):
                                                a standard Hugging Face model directory, no adapter
    <run_dir>/COMPLETE                          written last: the phase is finished
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CONFIG = "config.yaml"
COMPLETE = "COMPLETE"
ADAPTER = "adapter"
MODEL = "model"  # a full fine-tuning phase's output: config.json, safetensors, tokenizer
STAGES = "stages"
CHECKPOINTS = "checkpoints"
DONE = "DONE"
DATA_REPORT = "data_report.json"
METRICS = "metrics.jsonl"
ALERTS = "alerts.jsonl"
RECOVERIES = "recoveries.jsonl"
SMOKE = "smoke.jsonl"
RETENTION = "retention.json"  # holdout losses after the phase and its forgetting table
ACTIVITY = "activity.json"  # what the training process is doing now (loading, evaluating, smoke prompts 1/2)
EVAL_RESULTS = "eval.json"  # task scores of the base, each phase and exports (nova eval, gates; nova.runs.eval_results)
PID_FILE = "nova.pid"  # who holds the run: pid, host, start time (while it trains)
LOCK_FILE = "nova.lock"  # the operating-system lock itself (nova.runs.lock); stays after the run
RUN_MARKER = "nova_run.json"  # written when nova makes a run directory: --fresh deletes only in these
PLOT = "plots/loss.png"
PIPELINE = "pipeline.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# The longest path a run writes below its directory (a checkpoint moved aside while a save replaces it, a
# shard of a full fine-tuning checkpoint): what Windows' path limit is checked against (preflight).
DEFAULT_ROOT = "checkpoints"  # where runs go unless a config says otherwise (nova status and nova ui look here)
DEEPEST_FILE = "checkpoints/sft-10/.checkpoint-1000000.old-4294967-1700000000000/model-00001-of-00009.safetensors"
# What --fresh forgets of an earlier attempt of a phase.
ATTEMPT_STATE = (CHECKPOINTS, STAGES, METRICS, RECOVERIES, ALERTS, RETENTION)


def has_adapter(path: Path) -> bool:
    """True when ``path`` is a saved PEFT adapter directory (its adapter_config.json is there)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def has_model(path: Path) -> bool:
    """True when ``path`` is a saved model directory (config.json and safetensors weights)."""
    path = Path(path)
    return (path / "config.json").is_file() and (
        (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file())


def stage_names(methods: Sequence[str]) -> list[str]:
    """Directory names of a phase's stages from their methods: numbered when one repeats (sft, dpo, sft-2)."""
    names: list[str] = []
    for method in methods:
        n = 1
        while (method if n == 1 else f"{method}-{n}") in names:
            n += 1
        names.append(method if n == 1 else f"{method}-{n}")
    return names


def stage_label(phase: str, stage: str) -> str:
    """How a stage is named in the console, metrics, status and preflight: ``phase/stage``."""
    return f"{phase}/{stage}"


@dataclass(frozen=True)
class RunDir:
    """One phase's run directory; every path in it comes from here."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def adapter(self) -> Path:
        return self.path / ADAPTER

    @property
    def model_dir(self) -> Path:
        """The final model of a full fine-tuning phase (a LoRA phase has ``adapter`` instead)."""
        return self.path / MODEL

    @property
    def output(self) -> Path:
        """What the phase leaves: ``model/`` for a full fine-tuning phase, else ``adapter/``."""
        return self.model_dir if has_model(self.model_dir) else self.adapter

    @property
    def complete_marker(self) -> Path:
        return self.path / COMPLETE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def alerts(self) -> Path:
        return self.path / ALERTS

    @property
    def recoveries(self) -> Path:
        return self.path / RECOVERIES

    @property
    def smoke(self) -> Path:
        return self.path / SMOKE

    @property
    def retention(self) -> Path:
        return self.path / RETENTION

    @property
    def activity(self) -> Path:
        return self.path / ACTIVITY

    @property
    def eval_results(self) -> Path:
        return self.path / EVAL_RESULTS

    @property
    def pid_file(self) -> Path:
        return self.path / PID_FILE

    @property
    def plot(self) -> Path:
        return self.path / PLOT

    @property
    def checkpoints_root(self) -> Path:
        return self.path / CHECKPOINTS

    def checkpoints(self, stage: str) -> Path:
        """Where a stage's checkpoint-N directories go."""
        return self.path / CHECKPOINTS / stage

    def stage_dir(self, stage: str) -> Path:
        return self.path / STAGES / stage

    def stage_adapter(self, stage: str) -> Path:
        return self.stage_dir(stage) / ADAPTER

    def stage_model(self, stage: str) -> Path:
        return self.stage_dir(stage) / MODEL

    def stage_output(self, stage: str, full: bool) -> Path:
        """Where a stage's result goes: its model (full fine-tuning) or its adapter."""
        return self.stage_model(stage) if full else self.stage_adapter(stage)

    def stage_done(self, stage: str) -> Path:
        return self.stage_dir(stage) / DONE

    def data_report(self, stage: str) -> Path:
        return self.stage_dir(stage) / DATA_REPORT

    def stage_is_done(self, stage: str) -> bool:
        return self.stage_done(stage).is_file() and (has_adapter(self.stage_adapter(stage))
                                                     or has_model(self.stage_model(stage)))

    @property
    def is_complete(self) -> bool:
        """A finished phase: its adapter (or model) is saved and COMPLETE (written last) is there."""
        return self.complete_marker.exists() and (has_adapter(self.adapter) or has_model(self.model_dir))

    @property
    def looks_like_run(self) -> bool:
        """Something nova train wrote is here (for ``nova status`` on an arbitrary path)."""
        return any((self.path / n).exists() for n in (METRICS, CONFIG, COMPLETE, PID_FILE, CHECKPOINTS, STAGES))


def is_complete(run_dir: Path) -> bool:
    return RunDir(run_dir).is_complete


def is_run_dir(path: Path) -> bool:
    """A run directory (config.yaml, no config.json) rather than a model directory."""
    run = RunDir(path)
    return run.config.is_file() and not (run.path / "config.json").exists()
