"""``nova init --model PATH_OR_ID --data FILE``: a first config, every choice made from the data and the memory
estimate and printed with its reason (nova.init), then checked by preflight."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nova.console import echo

MethodOpt = Annotated[str | None, typer.Option(
    "--method", help="sft, dpo, kto, orpo, simpo or grpo (default: dpo for preference pairs, kto for labelled "
    "replies, else sft).")]


def init(
    model: Annotated[str, typer.Option("--model", "-m", help="Model directory, .gguf file or hub id.")],
    data: Annotated[Path, typer.Option("--data", "-d", help="The training data file (JSONL, JSON, CSV, Parquet).")],
    method: MethodOpt = None,
    gpu_memory: Annotated[str | None, typer.Option(
        "--gpu-memory", help="Fit batch and length for a GPU of this size (e.g. 24GiB) instead of the real one.")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Where to write the config [default: "
                                             "<data name>.yaml here].")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Phase name [default: the data file's name].")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out file.")] = False,
) -> None:
    """Write a commented, validated config for a model and a data file, and say what was chosen and why."""
    from nova.config.load import load_yaml_config
    from nova.errors import NovaError
    from nova.init import choose, write_config
    from nova.preflight import run_preflight

    choice = choose(model, data, method=method, gpu_memory=gpu_memory, name=name)
    target = out if out is not None else Path(f"{choice.name}.yaml")
    if target.exists() and not force:  # before the choices are printed: nothing said that is not done
        raise NovaError(f"{target} exists", hint="choose another --out, or pass --force to replace it")
    echo("chosen:")
    for line in choice.why:
        echo(f"  {line}")
    write_config(choice, target, force=True)
    echo(f"wrote {target} (validated)")
    report = run_preflight(load_yaml_config(target), gpu_memory=gpu_memory)
    for check in report.checks:
        if check.status in ("warn", "fail"):
            echo(f"preflight {check.status}: {check.name}: {check.message}")
            if check.fix:
                echo(f"  fix: {check.fix}")
    echo(f"preflight: {report.verdict}")
    echo(f"next: nova preflight --config {target}, then nova train --config {target}")
