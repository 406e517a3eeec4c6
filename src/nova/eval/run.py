"""``nova eval``: score every requested model on every task, build the table, store it in the run.

The order of work: resolve PATH and the rows (nothing loaded), read the file tasks (a bad file
costs no model load), load the run's tokenizer and build the run's own tasks (holdouts,
held-out pairs), then load one model at a time: a run's composition once for the base and every
phase of its chain (adapters switched per row, never merged), a merged model, each GGUF in
llama.cpp. A score already in the run's eval.json for the same weights (row key) and the same
items (task signature) is reused unless ``rescore``.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nova.errors import NovaError
from nova.eval.models import Row, Target, load_tokenizer_for, resolve_rows, resolve_target, system_prompt
from nova.eval.tasks import HOLDOUT, PREFERENCE, Task, holdout_tasks, pairs_task, resolve
from nova.runs.eval_results import read_eval, write_eval
from nova.runs.layout import RunDir

Say = Callable[[str], None]
View = Callable[[], AbstractContextManager[Any]]


@dataclass(frozen=True)
class EvalRequest:
    path: Path
    tasks: list[str]
    models: list[str] | None = None
    limit: int | None = None
    rescore: bool = False


def _tasks(request: EvalRequest, target: Target, tokenizer: Any, system: str | None,
           say: Say) -> list[tuple[str, Task]]:
    """(name asked for, task) in the order named: ``holdout`` gives one column per phase."""
    out: list[tuple[str, Task]] = []
    for name, item in zip(request.tasks, resolve(request.tasks, request.limit, system), strict=True):
        if isinstance(item, Task):
            out.append((name, item))
        elif item == HOLDOUT:
            held, notes = holdout_tasks(target.records, tokenizer)
            for note in notes:
                say(f"eval: {note}")
            out += [(name, t) for t in held]
        else:
            pairs = pairs_task(target.records, tokenizer, request.limit)
            if pairs is None:
                raise NovaError("task preference: no phase of this run has held-out preference pairs",
                                hint="it needs a dpo/orpo/simpo stage with eval_split > 0, or pass your own "
                                "pairs as a .jsonl task ({prompt, chosen, rejected})")
            out.append((name, pairs))
    return out


def _cached(olds: list[dict[str, Any]], row: Row, task: Task) -> float | None:
    """A score stored for the same weights (row key) on the same items (task signature), if any."""
    for old in olds:
        if old.get("tasks", {}).get(task.name, {}).get("signature") != task.signature:
            continue
        for entry in old.get("models", []):
            value = entry.get("scores", {}).get(task.name)
            if entry.get("name") == row.name and entry.get("key") == row.key and isinstance(value, int | float):
                return float(value)
    return None


def _stored_results(target: Target) -> list[dict[str, Any]]:
    """What eval.json already holds in PATH and in each phase's run directory (a gate's scores)."""
    dirs = [target.path, *[r.run.path for r in target.records]] if _stored(target) else []
    return [data for d in dirs if (data := read_eval(RunDir(d))) is not None]


def _hf_groups(target: Target, rows: list[Row]) -> Iterator[tuple[Callable[[], Any], list[tuple[Row, Any]]]]:
    """(load the model, [(row, how to view it)]) groups: one load per run composition, per model directory."""
    from nova.infer import load_model

    pending = [r for r in rows if r.kind in ("base", "phase")]
    for record in reversed(target.records):
        names = [r.name for r in record.chain] + [record.name]
        members = [r for r in pending if r.kind == "phase" and r.name in names] + \
                  [r for r in pending if r.kind == "base" and not record.full]
        if not any(r.kind == "phase" for r in members):
            continue
        pending = [r for r in pending if r not in members]
        views = [(r, ("base", None) if r.kind == "base" else ("upto", names[: names.index(r.name) + 1]))
                 for r in members]
        yield (lambda rec=record: load_model(rec.run.path)), views
    for row in pending:  # the base alone (no phase row asked for)
        yield (lambda row=row: load_model(row.path, base_only=True)), [(row, ("plain", None))]
    for row in rows:
        if row.kind in ("merged", "model"):
            yield (lambda row=row: load_model(row.path)), [(row, ("plain", None))]


def _view(loaded: Any, how: tuple[str, Any]) -> AbstractContextManager[Any]:
    from nova.model.adapters import active_adapters

    kind, names = how
    if kind == "base":
        return loaded.base_view()
    if kind == "upto" and loaded.has_adapters:
        return active_adapters(loaded.model, names)
    return nullcontext()


def _score_row(row: Row, tasks: list[Task], backend: Any, prompter: Any, scores: dict[str, dict[str, Any]],
               say: Say) -> None:
    from nova.eval.score import score

    for task in tasks:
        if task.name in scores[row.name]["scores"]:
            continue
        start = time.monotonic()
        value = score(task, backend, prompter)
        took = time.monotonic() - start
        scores[row.name]["seconds"][task.name] = round(took, 2)
        if value is None:
            say(f"eval: {row.name} / {task.name}: nothing to score")
            continue
        scores[row.name]["scores"][task.name] = round(value, 6)
        say(f"eval: {row.name} / {task.name}: {value:.4f} ({task.count} items, {took:.1f} s, {backend.engine})")


def evaluate(request: EvalRequest, say: Say = print) -> dict[str, Any]:
    """Score the rows on the tasks, store the results in the run(s) and return them (eval.json's shape)."""
    from nova.eval.backend import HFBackend, LlamaBackend
    from nova.eval.score import Prompter

    target = resolve_target(request.path)
    for note in target.notes:
        say(f"eval: {note}")
    rows = resolve_rows(target, request.models)
    system = system_prompt(target)
    resolve(request.tasks, request.limit, system)  # file tasks checked before anything loads
    if any(n in (HOLDOUT, PREFERENCE) for n in request.tasks) and not target.records:
        raise NovaError("tasks holdout and preference need a run (they read its recorded data)",
                        hint="give a run or pipeline directory as PATH")
    tokenizer = load_tokenizer_for(target)
    named = _tasks(request, target, tokenizer, system, say)
    tasks = [t for _, t in named]
    olds = [] if request.rescore else _stored_results(target)
    scores = {r.name: {"scores": {}, "seconds": {}} for r in rows}
    for row in rows:
        for task in tasks:
            if (value := _cached(olds, row, task)) is not None:
                scores[row.name]["scores"][task.name] = value
    todo = [r for r in rows if any(t.name not in scores[r.name]["scores"] for t in tasks)]
    prompter = Prompter(tokenizer, system)
    for load, views in _hf_groups(target, todo):
        loaded = load()
        backend = HFBackend(loaded.model, tokenizer)
        for row, how in views:
            with _view(loaded, how):
                _score_row(row, tasks, backend, prompter, scores, say)
        del loaded, backend
        gc.collect()
    for row in (r for r in todo if r.kind == "gguf"):
        llama = LlamaBackend(row.path, len(tokenizer))
        try:
            _score_row(row, tasks, llama, prompter, scores, say)
        finally:
            llama.close()
    columns: dict[str, list[str]] = {}
    for name, task in named:
        columns.setdefault(name, []).append(task.name)
    results = {"target": str(target.path), "system_prompt": system, "tasks": {t.name: t.spec() for t in tasks},
               "columns": columns,
               "models": [{**r.entry(), **scores[r.name]} for r in rows], "gates": []}
    store(target, results, say)
    return results


def _stored(target: Target) -> bool:
    """Results are kept in runs, pipelines and nova's merged models; never written into someone's model."""
    from nova.runs.card import MERGE_INFO

    return target.kind in ("run", "pipeline") or (target.kind == "model" and (target.path / MERGE_INFO).is_file())


def store(target: Target, results: dict[str, Any], say: Say) -> None:
    """eval.json in PATH; for a pipeline also in each phase's run directory (the rows of its chain, and the
    exports in the last phase's), whose model cards then show the table."""
    from nova.runs.card import write_run_cards

    if not _stored(target):
        say(f"eval: not stored ({target.path} is not a run, pipeline or nova merge output; to keep scores of a "
            "model, evaluate its run with --models MODEL)")
        return
    write_eval(RunDir(target.path), results)
    for record in target.records:
        names = {"base", *[r.name for r in record.chain], record.name}
        own = [m for m in results["models"] if m["name"] in names or
               (record is target.leaf and m["kind"] in ("merged", "model", "gguf"))]
        if record.run.path.resolve() != target.path.resolve():
            write_eval(record.run, {**results, "models": own})
        try:
            write_run_cards(record)
        except OSError as exc:  # a card is a convenience: the scores are stored
            say(f"eval: model card of {record.name} not rewritten: {exc}")
