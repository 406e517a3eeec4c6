"""A run's resolved config (``config.yaml``): written once by training, read back by everything else.

``config.yaml`` is the phase config as it ran (defaults and overrides applied, the base model
resolved) plus nova's own keys: ``_chain`` (the earlier phases' adapters this phase was
trained on top of, oldest first) and ``_resolved`` (device, dtype, what auto-fit chose).
``read_run`` validates it with the same schema as a user's config, so a damaged or foreign
file is one clear error, not a KeyError later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nova.config.base import RECORDED
from nova.config.load import read_yaml
from nova.config.schema import ModelConfig, PhaseConfig
from nova.errors import ConfigError, NovaError
from nova.files import write_text_atomic
from nova.runs.layout import RunDir, has_adapter, has_model, stage_names

CHAIN_KEY = "_chain"
RESOLVED_KEY = "_resolved"


@dataclass(frozen=True)
class AdapterRef:
    """A saved adapter of a chain: its name in the composed model and its directory."""

    name: str
    path: Path


@dataclass(frozen=True)
class RunRecord:
    """What a run directory says about itself: its phase config, base model and adapter chain."""

    run: RunDir
    phase: PhaseConfig
    model: ModelConfig
    chain: tuple[AdapterRef, ...]  # earlier phases, oldest first
    resolved: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.phase.name

    @property
    def stage_names(self) -> list[str]:
        return stage_names([s.method for s in self.phase.stages])

    @property
    def full(self) -> bool:
        """A full fine-tuning run (adapter: full): its result is a model directory, not an adapter."""
        return self.phase.adapter == "full"

    def require_model(self) -> Path:
        """The model directory of a full fine-tuning run, after checking it is on disk."""
        if not has_model(self.run.model_dir):
            raise NovaError(f"run directory {self.run.path} has no model/ (training did not finish)",
                            hint="finish or resume training first (nova train)")
        return self.run.model_dir

    @property
    def adapters(self) -> list[AdapterRef]:
        """Every adapter of the composition, oldest first, ending with this run's own."""
        return [*self.chain, AdapterRef(self.name, self.run.adapter)]

    def require_adapters(self) -> list[AdapterRef]:
        """``adapters``, after checking each is on disk (one clear error naming the missing one)."""
        if self.full:
            raise NovaError(f"{self.run.path} is a full fine-tuning run: it has no adapters; its model is "
                            f"{self.run.model_dir}", hint=f"use the model directory itself (nova export --model "
                            f"{self.run.model_dir}, or AutoModelForCausalLM.from_pretrained)")
        if not has_adapter(self.run.adapter):
            raise NovaError(f"run directory {self.run.path} has no adapter (training did not finish)",
                            hint="finish or resume training first (nova train)")
        for ref in self.chain:
            if not has_adapter(ref.path):
                raise NovaError(f"the adapter of earlier phase '{ref.name}' is missing at {ref.path}",
                                hint="that phase's run directory was moved or deleted; retrain it or restore it")
        names = [r.name for r in self.adapters]
        if len(set(names)) != len(names):
            raise NovaError(f"adapter names repeat in the chain of {self.run.path}: {names}")
        return self.adapters


def resolved_config(phase: PhaseConfig, model: ModelConfig, chain: list[AdapterRef],
                    resolved: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``config.yaml`` mapping of a run: the phase as it runs, its base model and chain."""
    data = phase.model_dump(mode="json")
    if phase.adapter == "full":  # no adapter settings: the file stays loadable as a full phase config
        data.pop("lora", None)
    data["model"] = model.model_dump(mode="json")
    data[CHAIN_KEY] = [{"phase": r.name, "adapter": str(r.path)} for r in chain]
    if resolved:
        data[RESOLVED_KEY] = resolved
    return data


def write_run_config(run: RunDir, data: dict[str, Any]) -> None:
    """Write config.yaml, with where the run's local files are (nova.runs.locate) added to ``_resolved``."""
    from nova.runs.locate import LOCATIONS_KEY, data_paths, record_locations

    resolved = dict(data.get(RESOLVED_KEY) or {})
    locations = record_locations(run.path, data.get("model") or {}, resolved, data_paths(data))
    if locations:
        data = {**data, RESOLVED_KEY: {**resolved, LOCATIONS_KEY: locations}}
    write_text_atomic(run.config, yaml.safe_dump(data, sort_keys=False))


def read_run(run_dir: Path) -> RunRecord:
    """Read and validate a run directory's ``config.yaml`` (a missing or bad file is a NovaError)."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise NovaError(f"run directory {run.path} does not exist", hint="pass <output_dir>/<phase> of a nova run")
    if not run.config.is_file():
        raise NovaError(f"{run.path} is not a nova run directory (no {run.config.name})",
                        hint="pass the directory of a phase written by nova train")
    try:
        data, _ = read_yaml(run.config)
    except ConfigError as exc:
        raise NovaError(f"cannot read {run.config}: {exc.problems[0].message}",
                        hint="it should be the config.yaml nova train wrote") from None
    return _record(run, data)


def _record(run: RunDir, data: dict[str, Any]) -> RunRecord:
    where = str(run.config)
    chain_raw = data.get(CHAIN_KEY) or []
    resolved = data.get(RESOLVED_KEY) or {}
    if not isinstance(chain_raw, list) or not isinstance(resolved, dict):
        raise NovaError(f"{where}: {CHAIN_KEY} or {RESOLVED_KEY} has the wrong shape",
                        hint="it should be the config.yaml nova train wrote")
    if not isinstance(data.get("model"), dict):
        raise NovaError(f"{where} has no model section", hint="it is not a resolved run config")
    try:
        phase = PhaseConfig.model_validate({k: v for k, v in data.items() if not str(k).startswith("_")},
                                           context=RECORDED)
        model = ModelConfig.model_validate(data["model"], context=RECORDED)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        first = str(exc).splitlines()
        raise NovaError(f"{where} is not a valid run config: {' '.join(first[:3])}",
                        hint="it should be the config.yaml nova train wrote") from None
    chain = []
    for item in chain_raw:
        if not isinstance(item, dict) or not isinstance(item.get("phase"), str) \
                or not isinstance(item.get("adapter"), str):
            raise NovaError(f"{where}: a {CHAIN_KEY} entry is not {{phase, adapter}}")
        chain.append(AdapterRef(item["phase"], _locate(Path(item["adapter"]), run.path)))
    return RunRecord(run, phase, model, tuple(chain), resolved)


def _locate(recorded: Path, run_dir: Path) -> Path:
    """The recorded adapter path, or the same phase beside this run (a pipeline moved, or a relative output_dir)."""
    if has_adapter(recorded):
        return recorded
    sibling = run_dir.parent / recorded.parent.name / recorded.name
    return sibling if has_adapter(sibling) else recorded
