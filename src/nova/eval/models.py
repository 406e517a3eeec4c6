"""What ``nova eval PATH --models ...`` scores: the rows of the table, resolved from PATH before loading.

PATH is a run directory (its chain), a pipeline output directory (every phase in pipeline.json)
or a model (a directory or a .gguf file). ``--models`` names rows: ``base``, a phase, ``merged``
(the run's ``nova merge`` output, ``<run>-merged``), a model directory or a .gguf file. Without it:
the base and every phase (a run or pipeline), or the model itself.

Each row has a ``parent``, what its "previous" delta compares with: the phase it starts from (the
base for a first phase), and for a merged model or an export the run's last phase; and a ``key``
made from its weights' files (size and modification time), so scores stored in eval.json are
reused only for the very same weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nova.errors import NovaError
from nova.runs.eval_results import BASE
from nova.runs.layout import PIPELINE, RunDir, is_run_dir
from nova.runs.record import RunRecord, read_run


@dataclass(frozen=True)
class Row:
    """One model of the table."""

    name: str
    kind: str  # base, phase, merged, model, gguf
    path: Path  # the run directory (base, phase), model directory or GGUF file
    parent: str | None = None
    key: str = ""

    def entry(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "parent": self.parent, "source": str(self.path),
                "key": self.key}


@dataclass
class Target:
    """PATH resolved: its phases' records in order (none for a model), where results are stored."""

    path: Path
    kind: str  # run, pipeline, model, gguf
    records: list[RunRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was left out, and why

    @property
    def leaf(self) -> RunRecord | None:
        return self.records[-1] if self.records else None

    def record(self, name: str) -> RunRecord | None:
        return next((r for r in self.records if r.name == name), None)

    def chain_names(self, record: RunRecord) -> list[str]:
        return [*[r.name for r in record.chain], record.name]


def _stat_key(paths: list[Path]) -> str:
    parts = []
    for path in paths:
        try:
            st = path.stat()
            parts.append(f"{path.name}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{path.name}:missing")
    return ";".join(parts)


def _weights(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.safetensors")) or [directory / "config.json"]


def resolve_target(path: Path) -> Target:
    """PATH as a run, a pipeline output directory or a model; a missing or foreign path is one clear error."""
    if not path.exists():
        raise NovaError(f"{path} does not exist", hint="give a run directory, a pipeline output directory or a model")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise NovaError(f"{path} is a file but not a .gguf model", hint="give a run, pipeline or model directory")
        return Target(path, "gguf")
    if (path / PIPELINE).is_file():
        from nova.runs.state import read_pipeline

        data = read_pipeline(path / PIPELINE) or {"phases": {}}
        records, notes = [], []
        for name, entry in data["phases"].items():
            run = Path(entry.get("run_dir") or path / name) if isinstance(entry, dict) else path / name
            run = run if run.is_dir() else path / name
            if RunDir(run).is_complete:
                records.append(read_run(run))
            else:
                notes.append(f"phase '{name}' has not finished ({run}): left out")
        if not records:
            raise NovaError(f"no phase of {path} has finished", hint="train it first (nova train)")
        return Target(path, "pipeline", records, notes)
    if is_run_dir(path):
        record = read_run(path)
        if not RunDir(path).is_complete:
            raise NovaError(f"run {path} has not finished (no COMPLETE)", hint="finish training first (nova train)")
        chain = [read_run(ref.path.parent) for ref in record.chain]
        return Target(path, "run", [*chain, record])
    if (path / "config.json").is_file():
        return Target(path, "model")
    raise NovaError(f"{path} is neither a run, a pipeline output directory nor a model directory",
                    hint="a run has config.yaml, a pipeline pipeline.json, a model config.json")


def _phase_row(target: Target, record: RunRecord) -> Row:
    parent = record.chain[-1].name if record.chain else BASE
    adapters = [*[ref.path for ref in record.chain], record.run.output]
    return Row(record.name, "phase", record.run.path, parent,
               _stat_key([w for a in adapters for w in _weights(a)]))


def _base_row(target: Target) -> Row:
    leaf = target.leaf
    assert leaf is not None
    base = Path(leaf.model.base)
    return Row(BASE, "base", leaf.run.path, None, f"{leaf.model.base}|{leaf.model.quantization}|" +
               (_stat_key(_weights(base)) if base.is_dir() else ""))


def _path_row(target: Target, spec: str) -> Row:
    path = Path(spec)
    leaf = target.leaf.name if target.leaf else None
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise NovaError(f"--models {spec}: no such GGUF file", hint="export one with nova export --format gguf")
        return Row(path.name, "gguf", path, leaf, _stat_key([path]))
    if (path / "config.json").is_file():
        return Row(path.name, "merged" if leaf else "model", path, leaf, _stat_key(_weights(path)))
    raise NovaError(f"--models {spec}: not a phase, 'base', 'merged', a model directory or a .gguf file")


def resolve_rows(target: Target, names: list[str] | None) -> list[Row]:
    """The rows asked for (see the module docstring), in the order given; duplicates are an error."""
    if target.kind in ("model", "gguf"):
        first = _path_row(target, str(target.path))
        others = [_path_row(target, n) for n in names or [] if Path(n).resolve() != target.path.resolve()]
        return [first, *[Row(r.name, r.kind, r.path, first.name, r.key) for r in others]]
    phases = [r.name for r in target.records]
    rows = []
    for name in names or [BASE, *phases]:
        if name == BASE:
            rows.append(_base_row(target))
        elif name in phases:
            record = target.record(name)
            assert record is not None
            rows.append(_phase_row(target, record))
        elif name == "merged":
            assert target.leaf is not None
            merged = Path(f"{target.leaf.run.path}-merged")
            if not (merged / "config.json").is_file():
                raise NovaError(f"--models merged: {merged} has no merged model",
                                hint=f"make it with nova merge --run {target.leaf.run.path}")
            rows.append(Row("merged", "merged", merged, target.leaf.name, _stat_key(_weights(merged))))
        else:
            rows.append(_path_row(target, name))
    seen = [r.name for r in rows]
    if len(set(seen)) != len(seen):
        raise NovaError(f"--models names a model twice ({', '.join(seen)})")
    return rows


def system_prompt(target: Target) -> str | None:
    """The run's system prompt: what its chats were trained with when they had none of their own.

    Read from the last phase's config (``data.system_prompt`` of its first stage that sets one);
    a model without a run has none."""
    leaf = target.leaf
    if leaf is None:
        return None
    return next((s.data.system_prompt for s in leaf.phase.stage_list if s.data.system_prompt), None)


def load_tokenizer_for(target: Target) -> Any:
    """The tokenizer every row is scored with: the run's (its chat template override applied), or the model's."""
    from nova.config.schema import ModelConfig
    from nova.model.loading import load_tokenizer, resolve_base

    if target.leaf is not None:
        return load_tokenizer(target.leaf.model, resolve_base(target.leaf.model))
    if target.kind == "gguf":
        transformers = __import__("transformers")
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(target.path.parent), gguf_file=target.path.name)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer
    cfg = ModelConfig(base=str(target.path), quantization="none")
    return load_tokenizer(cfg, resolve_base(cfg))
