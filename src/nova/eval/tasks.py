"""Which tasks ``nova eval`` scores: names resolved to items before any model loads.

A task is named in one of these ways (``--tasks`` and a phase's ``eval.tasks``):

- a suite shipped with nova (``xquad_ro``, ``hellaswag``, ``gsm8k``: src/nova/resources/eval/,
  provenance in its README.md);
- a JSONL file of your own (its stem is the column; ``nova.eval.items`` reads it);
- ``holdout``: each phase's SFT holdout, rebuilt from the run's recorded config as the forgetting
  table does (one column per phase, ``holdout:<phase>``, mean loss per token, lower is better);
- ``preference``: the held-out pairs of the run's preference stages (dpo, orpo, simpo), right when
  the chosen reply is the more likely;
- ``lm:NAME`` or ``lm:FILE.yaml``: an lm-evaluation-harness task (``nova.eval.lmeval``).

``limit`` keeps the first N items of every task but ``holdout`` (scored whole, as the forgetting
table scores it). A task's ``signature`` hashes what it scores, so a score is reused or compared
only with scores of the same items.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nova.errors import NovaError
from nova.eval.items import Item, read_items

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "resources" / "eval"
HOLDOUT = "holdout"
PREFERENCE = "preference"
LM_PREFIX = "lm:"
METRICS = {"generate": "exact_match", "choice": "accuracy", "preference": "accuracy", "pairs": "accuracy",
           "holdout": "loss"}


@dataclass
class Task:
    """One column of the table: what is scored and how."""

    name: str
    kind: str  # generate, choice, preference (file pairs), pairs (a run's held-out pairs), holdout, lm
    source: str
    items: list[Item] = field(default_factory=list)
    data: Any = None  # holdout: tokenized (input_ids, labels); pairs: (prompt_ids, chosen_ids, rejected_ids)
    lm: Any = None  # lm: the task config (a dict) or a registry name
    metric: str = ""
    higher_is_better: bool = True
    signature: str = ""
    count: int = 0

    def spec(self) -> dict[str, Any]:
        """What eval.json records of the task."""
        return {"kind": self.kind, "metric": self.metric, "higher_is_better": self.higher_is_better,
                "items": self.count, "signature": self.signature, "source": self.source}


def shipped() -> list[str]:
    """The suites shipped with nova, by name."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.jsonl"))


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


def file_task(name: str, path: Path, limit: int | None, system: str | None) -> Task:
    """A JSONL task (shipped or the user's): its first ``limit`` items."""
    items = read_items(path)[:limit]
    kind = items[0].kind
    task = Task(name, kind, str(path), items=items, metric=METRICS[kind], count=len(items))
    task.signature = _digest(kind, [vars(i) for i in items], system)
    return task


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise NovaError(f"cannot read lm-eval task {path}: {exc}") from None
    if not isinstance(config, dict) or not isinstance(config.get("task"), str):
        raise NovaError(f"{path} is not an lm-eval task config (no 'task' name)", hint="see docs/eval.md")
    files = (config.get("dataset_kwargs") or {}).get("data_files")
    if isinstance(files, dict):  # relative to the YAML file, so a task ships with its data
        config["dataset_kwargs"]["data_files"] = {k: str((path.parent / v).resolve()) for k, v in files.items()}
    elif isinstance(files, str):
        config["dataset_kwargs"]["data_files"] = str((path.parent / files).resolve())
    return config


def lm_task(name: str, limit: int | None) -> Any:
    """The Task of ``lm:NAME`` / ``lm:FILE.yaml`` (read now; lm-eval itself is imported when it runs)."""
    spec = name.removeprefix("lm:")
    path = SHIPPED_DIR / f"{spec}.yaml" if (SHIPPED_DIR / f"{spec}.yaml").is_file() else Path(spec)
    if spec.endswith((".yaml", ".yml")) or path.is_file():
        config = _load_yaml(path)
        column = f"lm:{config['task']}"
        task = Task(column, "lm", str(path), lm=config, metric="lm-eval", count=limit or 0)
        files = config.get("dataset_kwargs", {}).get("data_files")
        contents = [Path(f).read_bytes().hex()[:4096] if Path(f).is_file() else f
                    for f in (files.values() if isinstance(files, dict) else [files]) if f]
        task.signature = _digest(config, contents, limit)
        return task
    task = Task(name, "lm", f"lm-eval registry task {spec}", lm=spec, metric="lm-eval", count=limit or 0)
    task.signature = _digest(spec, limit)
    return task


def resolve(names: list[str], limit: int | None, system: str | None) -> list[Task | str]:
    """Each name in order: its Task when it is read from a file (shipped, the user's, lm-eval), else the
    name of a run task (``holdout``, ``preference``: built once the run's tokenizer is loaded).
    An unknown name is one error listing what exists."""
    out: list[Task | str] = []
    for name in names:
        if name in (HOLDOUT, PREFERENCE):
            out.append(name)
        elif name.startswith(LM_PREFIX):
            out.append(lm_task(name, limit))
        elif (SHIPPED_DIR / f"{name}.jsonl").is_file():
            out.append(file_task(name, SHIPPED_DIR / f"{name}.jsonl", limit, system))
        elif name.endswith(".jsonl") or Path(name).is_file():
            out.append(file_task(Path(name).stem, Path(name), limit, system))
        else:
            raise NovaError(f"unknown task '{name}'", hint=f"shipped: {', '.join(shipped())}; or holdout, preference, "
                            "a .jsonl file of items, lm:TASK or lm:FILE.yaml (docs/eval.md)")
    columns = [t.name for t in out if isinstance(t, Task)]
    if len(set(columns)) != len(columns):
        raise NovaError(f"two tasks share a column name ({', '.join(columns)})", hint="rename one of the files")
    return out


def _concat(parts: list[Any]) -> Any:
    parts = [p for p in parts if p is not None and len(p) > 0]
    if len(parts) <= 1:
        return parts[0] if parts else None
    import datasets

    return datasets.concatenate_datasets(parts)


def _rows_digest(data: Any, columns: tuple[str, ...]) -> str:
    return _digest([[list(row[c]) for c in columns] for row in data])


def holdout_tasks(records: list[Any], tokenizer: Any) -> tuple[list[Task], list[str]]:
    """One task per phase with an SFT holdout (``holdout:<phase>``): that phase's eval split, rebuilt from
    its recorded config and tokenized as it trained; (tasks, notes on phases without one)."""
    from nova.data import prepare_stage_data

    tasks, notes = [], []
    for record in records:
        parts = [prepare_stage_data(s.data, tokenizer, method=s.method, seed=s.training.seed).eval
                 for s in record.phase.stage_list if s.spec.trains_sequences]
        data = _concat(parts)
        if data is None:
            notes.append(f"phase '{record.name}' has no SFT holdout (eval_split 0, or no SFT stage)")
            continue
        data = data.select_columns(["input_ids", "labels"])
        task = Task(f"{HOLDOUT}:{record.name}", "holdout", f"{record.run.path} (SFT eval split)", data=data,
                    metric="loss", higher_is_better=False, count=len(data))
        task.signature = _rows_digest(data, ("input_ids", "labels"))
        tasks.append(task)
    return tasks, notes


def pairs_task(records: list[Any], tokenizer: Any, limit: int | None) -> Task | None:
    """The held-out pairs of every preference stage (dpo, orpo, simpo) of the phases, tokenized as trained."""
    from nova.data import prepare_stage_data

    parts = [prepare_stage_data(s.data, tokenizer, method=s.method, seed=s.training.seed, dpo=s.length_settings).eval
             for record in records for s in record.phase.stage_list if s.spec.paired]
    data = _concat(parts)
    if data is None:
        return None
    columns = ("prompt_ids", "chosen_ids", "rejected_ids")
    data = data.select_columns(list(columns))
    if limit is not None:
        data = data.select(range(min(limit, len(data))))
    sources = ", ".join(sorted({str(r.run.path) for r in records}))
    task = Task(PREFERENCE, "pairs", f"held-out pairs of {sources}", data=data, metric="accuracy", count=len(data))
    task.signature = _rows_digest(data, columns)
    return task
