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


ProbeOpt = Annotated[bool, typer.Option("--probe", help="After the checks, run nova train --probe: a few real steps "
                                        "of each stage's worst micro batch, measured (see nova train --help).")]


def preflight(config: ConfigOpt, json_out: JsonOpt = False, gpu_memory: GpuMemoryOpt = None,
              gpus: GpusOpt = None, overrides: SetOpt = None, no_data: NoDataOpt = False,
              nproc_per_node: RanksOpt = None, probe: ProbeOpt = False) -> None:
    """Check a config before training: GPUs, memory estimate, model, data, schedule, disk."""
    from nova.config.load import load_yaml_config
    from nova.preflight import run_preflight

    loaded = load_yaml_config(config, overrides)
    report = run_preflight(loaded, gpu_memory=gpu_memory, gpus=gpus, check_data=not no_data, ranks=nproc_per_node)
    probed = None
    if probe and report.verdict != "fail":  # only once the checks pass: a probe loads the model and trains
        from nova.cli.train_cmd import run_probe_quietly

        probed = run_probe_quietly(loaded, json_out)
    if json_out:
        out = report.to_dict() if probed is None else {**report.to_dict(), "probe": probed.to_dict()}
        typer.echo(json.dumps(out, indent=2, ensure_ascii=True))
    else:
        from nova.console import terminal_width

        for line in report.lines(terminal_width()) + ([] if probed is None else probed.lines()):
            echo(line)
    if report.verdict == "fail" or (probed is not None and not probed.fits):
        raise typer.Exit(1)
