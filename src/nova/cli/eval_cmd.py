"""``nova eval PATH``: the base, every phase, merged models and GGUF exports scored on the same tasks.

Prints one table (models as rows, tasks as columns, each cell with its change against the base and
the phase before) and stores it in the run as eval.json; ``--json`` prints that file's content.
Torch, transformers and lm-eval are imported only when the command runs (``nova.eval.run``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from nova.cli.options import JsonOpt

DEFAULT_TASKS = "xquad_ro,hellaswag,preference"

PathArg = Annotated[Path, typer.Argument(help="A run directory, a pipeline output directory, a model directory or "
                                         "a .gguf file.", show_default=False)]


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items or None


def eval_(
    path: PathArg,
    tasks: Annotated[str, typer.Option("--tasks", "-t", help="Comma-separated tasks: shipped suites (xquad_ro, "
                                       "hellaswag, gsm8k), holdout, preference, your own .jsonl files, lm:TASK or "
                                       "lm:FILE.yaml (lm-evaluation-harness); see docs/eval.md. Default: "
                                       f"{DEFAULT_TASKS}, or the shipped suites for a model.")] = "",
    models: Annotated[str | None, typer.Option("--models", "-m", help="Comma-separated rows: base, a phase name, "
                                               "merged (<run>-merged), a model directory or a .gguf file. Default: "
                                               "the base and every phase.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", "-n", min=1, help="Score the first N items of each task "
                                              "(every task but holdout).")] = None,
    rescore: Annotated[bool, typer.Option("--rescore", help="Score again what eval.json already holds for the "
                                          "same weights and items.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Score the base, each phase, merged models and GGUF exports on the same tasks; store eval.json."""
    from nova.errors import NovaError
    from nova.eval.run import EvalRequest, evaluate
    from nova.runs.eval_results import gate_lines, legend, table_lines

    names = _split(tasks)
    if names is None:
        is_run = path.is_dir() and ((path / "config.yaml").is_file() or (path / "pipeline.json").is_file())
        names = DEFAULT_TASKS.split(",") if is_run else ["xquad_ro", "hellaswag"]
    if len(set(names)) != len(names):
        raise NovaError(f"--tasks names a task twice: {','.join(names)}")
    say = (lambda line: typer.echo(line, err=True)) if json_out else typer.echo
    results = evaluate(EvalRequest(path, names, _split(models), limit, rescore), say=say)
    if json_out:
        typer.echo(json.dumps(results, indent=2, ensure_ascii=True))
        return
    typer.echo("")
    for line in table_lines(results):
        typer.echo(line)
    typer.echo(legend())
    for line in gate_lines(results):
        typer.echo(line)
