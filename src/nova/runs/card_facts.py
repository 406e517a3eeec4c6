"""What a model card says, read from a run directory: chain, data, settings, eval losses, forgetting.

Files only (config.yaml, data_report.json, metrics.jsonl, pipeline.json, the base's README or
import record): no torch, so training, merge and export can all write cards cheaply. Every value
comes from a file nova wrote or from the data's own README; what is not recorded is said to be
not recorded, never filled in.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nova.runs.jsonl import number, read_json, read_jsonl
from nova.runs.layout import DATA_REPORT, METRICS, PIPELINE, STAGES, RunDir

if TYPE_CHECKING:
    from nova.runs.record import RunRecord

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*\n", re.S)


@dataclass
class StageFacts:
    """One trained stage: method, schedule, data counts, last eval loss."""

    label: str
    method: str
    settings: dict[str, Any]
    sources: list[dict[str, Any]]
    train_records: int | None
    eval_records: int | None
    eval_loss: float | None
    train_loss: float | None


@dataclass
class PhaseFacts:
    """One phase of the chain (oldest first), with its LoRA settings and stages."""

    name: str
    lora: dict[str, Any]
    stages: list[StageFacts] = field(default_factory=list)
    forgetting: dict[str, dict[str, float]] = field(default_factory=dict)
    holdout_loss: float | None = None  # the phase's own holdout on its final composition (retention.json)


def hub_id(name: str | None) -> str | None:
    """``name`` when it is a hub id (owner/name) and not a local path, else None."""
    if not name or not _HUB_ID.match(name) or Path(name).expanduser().exists():
        return None
    return name


def portable_base(base: str) -> str:
    """The base as a card names it: a hub id or relative path as is, an absolute one (or ``~``) by its name.

    A card travels with the adapter; it must not carry this machine's directories (the same rule as
    the adapter's own base_model_name_or_path, nova.model.adapters.base_name).
    """
    if Path(base).is_absolute() or base.startswith("~"):
        return Path(base).expanduser().name
    return base


def front_matter(readme: Path) -> dict[str, Any]:
    """The YAML front matter of a README.md (a hub model or dataset card), or {}."""
    import yaml

    try:
        match = _FRONT_MATTER.match(readme.read_text(encoding="utf-8"))
        data = yaml.safe_load(match.group(1)) if match else None
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def base_license(base: str) -> str | None:
    """The base model's license: its card's front matter, else the GGUF it was imported from."""
    path = Path(base).expanduser()
    if not path.is_dir():
        return None
    found = front_matter(path / "README.md").get("license")
    if isinstance(found, str):
        return found
    record = read_json(path / "nova_import.json") or {}
    source = Path(str(record.get("source_path", "")))
    if source.is_file():
        try:
            import gguf

            field_ = gguf.GGUFReader(str(source)).fields.get("general.license")
            value = field_.contents() if field_ is not None else None
            return value if isinstance(value, str) else None
        except Exception:  # an unreadable source only means the license is not known here
            return None
    return None


def data_license(path: str) -> str | None:
    """A data file's license from a README.md beside it: hub card front matter, or a table row.

    The table form is the one ``data/README.md`` uses: a markdown table with ``file`` and
    ``license`` columns, one row per file.
    """
    source = Path(path).expanduser()
    readme = (source if source.is_dir() else source.parent) / "README.md"
    found = front_matter(readme).get("license")
    if isinstance(found, str):
        return found
    try:
        lines = readme.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    header: list[str] | None = None
    for line in lines:
        cells = [c.strip().lower() if header is None else c.strip() for c in line.strip().strip("|").split("|")]
        if header is None and "file" in cells and "license" in cells:
            header = cells
        elif header is not None and len(cells) == len(header) and cells[header.index("file")] == source.name:
            return cells[header.index("license")]
    return None


def _losses(run_dir: Path, stage: str) -> tuple[float | None, float | None]:
    """(last eval loss, last train loss) of one stage from metrics.jsonl."""
    eval_loss = train_loss = None
    for record in read_jsonl(run_dir / METRICS):
        if record.get("stage") not in (stage, None):
            continue
        eval_loss = number(record.get("eval_loss")) if "eval_loss" in record else eval_loss
        train_loss = number(record.get("loss")) if "loss" in record else train_loss
    return eval_loss, train_loss


def _settings(stage: Any) -> dict[str, Any]:
    t = stage.training
    out = {"max_steps": t.max_steps, "num_epochs": t.num_epochs if t.max_steps is None else None,
           "micro_batch_size": t.micro_batch_size, "gradient_accumulation_steps": t.gradient_accumulation_steps,
           "learning_rate": t.learning_rate, "lr_scheduler": t.lr_scheduler, "warmup_ratio": t.warmup_ratio,
           "optimizer": t.optimizer, "max_length": stage.data.max_length, "seed": t.seed}
    out.update(stage.spec.card_settings(stage.method_settings))  # the method's own (nova.methods)
    return out


def _stage_facts(run_dir: Path, label: str, name: str, stage: Any) -> StageFacts:
    report = read_json(run_dir / STAGES / name / DATA_REPORT) or {}
    sources = []
    for src in report.get("sources") or [{"path": s.path} for s in stage.data.datasets]:
        path = str(src.get("path"))
        sources.append({"path": path, "name": Path(path).name, "read": src.get("read"), "kept": src.get("kept"),
                        "formats": src.get("formats") or {}, "license": data_license(path)})
    eval_loss, train_loss = _losses(run_dir, name)
    return StageFacts(label, stage.method, _settings(stage), sources, report.get("train_records"),
                      report.get("eval_records"), eval_loss, train_loss)


def phase_facts(record: RunRecord) -> PhaseFacts:
    """The facts of one phase's run directory (its own config, reports and metrics)."""
    from nova.runs.layout import stage_label

    lora = record.phase.lora
    facts = PhaseFacts(record.name, {"r": lora.r, "alpha": lora.alpha, "dropout": lora.dropout,
                                     "target_modules": lora.target_modules, "use_rslora": lora.use_rslora})
    for name, stage in zip(record.stage_names, record.phase.stage_list, strict=True):
        facts.stages.append(_stage_facts(record.run.path, stage_label(record.name, name), name, stage))
    facts.forgetting = forgetting(record.run.path, record.name)
    facts.holdout_loss = holdout_loss(record.run.path, record.name)
    return facts


def forgetting(run_dir: Path, phase: str) -> dict[str, dict[str, float]]:
    """The phase's forgetting table ({earlier phase or retention set: {eval_loss_before, eval_loss_after}}).

    From the run's retention.json (nova.runs.retention), else from ``pipeline.json``'s
    ``phases.<phase>.forgetting``; rows without both numbers are left out.
    """
    from nova.runs.retention import read_retention

    table = (read_retention(RunDir(run_dir)) or {}).get("forgetting")
    if not isinstance(table, dict) or not table:
        table = _pipeline_entry(run_dir, phase).get("forgetting")
    out: dict[str, dict[str, float]] = {}
    for earlier, values in (table if isinstance(table, dict) else {}).items():
        if isinstance(values, dict):
            before, after = number(values.get("eval_loss_before")), number(values.get("eval_loss_after"))
            if before is not None and after is not None:
                out[str(earlier)] = {"eval_loss_before": before, "eval_loss_after": after}
    return out


def _pipeline_entry(run_dir: Path, phase: str) -> dict[str, Any]:
    """The phase's entry of ``pipeline.json`` beside its run directory (phases by name, or a list)."""
    phases = (read_json(run_dir.parent / PIPELINE) or {}).get("phases")
    entry: Any = None
    if isinstance(phases, dict):
        entry = phases.get(phase)
    elif isinstance(phases, list):
        entry = next((p for p in phases if isinstance(p, dict) and p.get("name") == phase), None)
    return entry if isinstance(entry, dict) else {}


def holdout_loss(run_dir: Path, phase: str) -> float | None:
    """The phase's own holdout loss on its final composition (retention.json), when measured."""
    from nova.runs.retention import own_loss

    return own_loss(RunDir(run_dir), phase)


def chain_facts(record: RunRecord) -> list[PhaseFacts]:
    """Every phase of the composition, oldest first; an earlier phase whose run is gone is named only."""
    from nova.errors import NovaError
    from nova.runs.record import read_run

    phases = []
    for ref in record.chain:
        try:
            phases.append(phase_facts(read_run(ref.path.parent)))
        except NovaError:
            phases.append(PhaseFacts(ref.name, {}))
    phases.append(phase_facts(record))
    return phases


def json_line(value: Any) -> str:
    """A compact JSON rendering for table cells (lists of target modules, format counts)."""
    return json.dumps(value, separators=(", ", ": "))
