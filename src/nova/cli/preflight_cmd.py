"""``nova preflight``: will this config train on this machine? One verdict, a fix for each problem.

Exit code 0 for pass or warn, 1 for fail (so scripts and ``nova train`` can stop early).
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from nova.cli.options import ConfigOpt, JsonOpt, SetOpt
from nova.console import echo

GpuMemoryOpt = Annotated[
    str | None,
    typer.Option("--gpu-memory", help="Answer for a GPU with this much memory (e.g. 24GiB) instead of the real ones."),
]
GpusOpt = Annotated[
    int | None,
    typer.Option("--gpus", help="Number of GPUs: hypothetical ones with --gpu-memory, else the first N real ones."),
]
NoDataOpt = Annotated[bool, typer.Option("--no-data", help="Skip reading the training data.")]
RanksOpt = Annotated[
    int | None,
    typer.Option("--nproc-per-node", min=1, max=1024, help="Training processes (as for nova train): memory is then "
                 "estimated per rank for the strategy that would run. Default: distributed.gpus of the config."),
]


def preflight(config: ConfigOpt, json_out: JsonOpt = False, gpu_memory: GpuMemoryOpt = None,
              gpus: GpusOpt = None, overrides: SetOpt = None, no_data: NoDataOpt = False,
              nproc_per_node: RanksOpt = None) -> None:
    """Check a config before training: GPUs, memory estimate, model, data, schedule, disk."""
    from nova.config.load import load_yaml_config
    from nova.preflight import run_preflight

    loaded = load_yaml_config(config, overrides)
    report = run_preflight(loaded, gpu_memory=gpu_memory, gpus=gpus, check_data=not no_data, ranks=nproc_per_node)
    if json_out:
        typer.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=True))
    else:
        from nova.console import terminal_width

        for line in report.lines(terminal_width()):
            echo(line)
    if report.verdict == "fail":
        raise typer.Exit(1)
