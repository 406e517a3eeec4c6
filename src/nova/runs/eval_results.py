"""``eval.json``: the task scores of a run's models, written by ``nova eval`` and the pipeline's gates.

Read here without torch by ``nova status``, the model cards and the web UI. The file holds::

    {"tasks":  {task: {"metric", "higher_is_better", "items", "signature", "kind"}},
     "models": [{"name", "kind", "parent", "source", "key", "scores": {task: value}}],
     "gates":  [{"phase", "task", "passed", "forced", "message", ...}],
     "system_prompt": ..., "time": ...}

A model's ``parent`` is what its "previous" delta compares with (the phase it starts from, the
base for a first phase, the phase an export was made from). A task's ``signature`` hashes its
items and settings: a score is kept across evaluations only beside scores of the same signature,
and a model's scores only while its ``key`` (its weights' files) is the same.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from nova.files import write_json_atomic
from nova.runs.jsonl import number, read_json
from nova.runs.layout import RunDir

BASE = "base"


def read_eval(run: RunDir) -> dict[str, Any] | None:
    """The run's eval.json, or None when it has none (or it is not the expected shape)."""
    data = read_json(run.eval_results)
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        return None
    # A hand-edited or older file: keep what has the expected shape, so readers never trip on it.
    data["models"] = [m for m in data["models"] if isinstance(m, dict) and isinstance(m.get("scores"), dict)]
    tasks = data.get("tasks")
    data["tasks"] = {k: v for k, v in tasks.items() if isinstance(v, dict)} if isinstance(tasks, dict) else {}
    data["gates"] = [g for g in data.get("gates") or [] if isinstance(g, dict)]
    return data


def _keep_old(old: dict[str, Any], new: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The old tasks and rows that still compare with the new ones (same signature; a model's same key)."""
    tasks = {name: spec for name, spec in old.get("tasks", {}).items()
             if name not in new["tasks"] or new["tasks"][name].get("signature") == spec.get("signature")}
    fresh = {m["name"]: m for m in new["models"]}
    rows = []
    for row in old.get("models", []):
        if not isinstance(row, dict) or not isinstance(row.get("scores"), dict):
            continue
        now = fresh.get(row.get("name"))
        if now is not None and now.get("key") != row.get("key"):
            continue  # retrained or re-exported: its old scores are of another model
        scores = {t: v for t, v in row["scores"].items() if t in tasks and (now is None or t not in now["scores"])}
        rows.append({**row, "scores": scores})
    return tasks, rows


def merge_results(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """``new`` with what ``old`` measured that still applies: scores of tasks not run now, of models not
    scored now. Rows keep the old order, new models are added in theirs."""
    if not old:
        return {**new, "time": time.time()}
    tasks, kept = _keep_old(old, new)
    merged_rows: list[dict[str, Any]] = []
    fresh = {m["name"]: m for m in new["models"]}
    for row in kept:
        now = fresh.pop(row["name"], None)
        merged_rows.append(row if now is None else {**row, **now, "scores": {**row["scores"], **now["scores"]}})
    merged_rows += list(fresh.values())
    replaced = {g.get("phase") for g in new.get("gates", []) if isinstance(g, dict)}
    gates = [*[g for g in old.get("gates", []) if isinstance(g, dict) and g.get("phase") not in replaced],
             *new.get("gates", [])]
    return {**old, **new, "tasks": {**tasks, **new["tasks"]}, "models": merged_rows, "gates": gates,
            "time": time.time()}


def write_eval(run: RunDir, results: dict[str, Any]) -> None:
    """Merge ``results`` into the run's eval.json (see ``merge_results``)."""
    write_json_atomic(run.eval_results, merge_results(read_eval(run), results))


def better(spec: dict[str, Any], after: float, before: float) -> float:
    """How much better ``after`` is than ``before`` (negative: worse), whatever the task's direction."""
    return (after - before) if spec.get("higher_is_better", True) else (before - after)


def deltas(results: dict[str, Any], row: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per task: the change against the base and against the row's parent (raw differences)."""
    by_name = {m["name"]: m for m in results.get("models", []) if isinstance(m, dict)}
    out: dict[str, dict[str, float]] = {}
    for task, value in row.get("scores", {}).items():
        value = number(value)
        if value is None:
            continue
        cell: dict[str, float] = {}
        for label, other in (("base", by_name.get(BASE)), ("previous", by_name.get(row.get("parent") or ""))):
            ref = number((other or {}).get("scores", {}).get(task))
            if other is not None and other is not row and ref is not None:
                cell[label] = round(value - ref, 6)
        out[task] = cell
    return out


def _fmt(value: float, spec: dict[str, Any]) -> str:
    return f"{value:.4f}" if spec.get("metric") == "loss" else f"{value:.3f}"


def cell_text(results: dict[str, Any], row: dict[str, Any], task: str) -> str:
    """One cell: the score, then its change against the base (b) and the previous phase (p)."""
    value = number(row.get("scores", {}).get(task))
    if value is None:
        return "-"
    spec = results.get("tasks", {}).get(task, {})
    change = deltas(results, row).get(task, {})
    parts = [f"{k[0]} {v:+.3f}" for k, v in change.items()
             if not (k == "previous" and row.get("parent") == BASE)]
    return _fmt(value, spec) + (f" ({', '.join(parts)})" if parts else "")


def table_lines(results: dict[str, Any], tasks: Sequence[str] | None = None) -> list[str]:
    """The table as ASCII lines: models as rows, tasks as columns, each cell with its deltas."""
    rows = [m for m in results.get("models", []) if isinstance(m, dict)]
    names = list(tasks) if tasks is not None else list(results.get("tasks", {})) or list(
        dict.fromkeys(t for m in rows for t in m.get("scores", {})))
    if not rows or not names:
        return []
    header = ["model", *[_title(n, results) for n in names]]
    body = [[str(m.get("name")), *[cell_text(results, m, n) for n in names]] for m in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *body]]
    return [line.encode("ascii", "replace").decode("ascii") for line in lines]


def _title(task: str, results: dict[str, Any]) -> str:
    spec = results.get("tasks", {}).get(task, {})
    metric = {"accuracy": "acc", "exact_match": "em", "loss": "loss"}.get(str(spec.get("metric")),
                                                                         str(spec.get("metric", "")))
    items = spec.get("items")
    parts = [p for p in (metric, f"n={items}" if items else "") if p]
    return f"{task} ({', '.join(parts)})" if parts else task


def legend() -> str:
    return "b: change against the base; p: against the phase before (for an export: the phase it was made from)"


def gate_lines(results: dict[str, Any]) -> list[str]:
    """One line per gate checked: passed, failed, or failed and continued with --force-gates."""
    out = []
    for gate in results.get("gates", []):
        if not isinstance(gate, dict):
            continue
        state = "passed" if gate.get("passed") else ("FAILED, continued (--force-gates)" if gate.get("forced")
                                                    else "FAILED")
        out.append(f"gate {gate.get('phase')}/{gate.get('task')}: {state}: {gate.get('message', '')}")
    return out
