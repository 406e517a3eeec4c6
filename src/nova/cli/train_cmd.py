"""``nova train``: run a phase or pipeline config."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer

from nova.cli.options import ConfigOpt, SetOpt
from nova.console import echo
from nova.errors import NovaError


def train(
    config: ConfigOpt,
    set_: SetOpt = None,
    phase: str | None = typer.Option(None, "--phase", help="Run only this phase (its inputs must exist)."),
    force: bool = typer.Option(False, "--force", help="Retrain phases that already finished (and go on past "
                               "failed eval gates)."),
    force_gates: bool = typer.Option(False, "--force-gates", help="Go on past a phase whose eval tasks are past "
                                     "their limits (its eval: section), without retraining; recorded in "
                                     "pipeline.json."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate config, data and model access; print the plan."),
    no_preflight: bool = typer.Option(False, "--no-preflight", help="Skip the preflight checks before training."),
    fresh: bool = typer.Option(False, "--fresh", help="Ignore existing checkpoints of unfinished phases."),
    resume_with_changes: bool = typer.Option(
        False, "--resume-with-changes", help="Resume although training.learning_rate or training.max_steps "
        "differ from the checkpoint's: the new values are applied from the resumed step on and recorded in "
        "the run's config.yaml. Any other change still needs --fresh."),
    nproc_per_node: int | None = typer.Option(
        None, "--nproc-per-node", min=1, max=1024, help="Ranks on this machine (torchrun): one per GPU; on a CPU, "
        "N processes with the gloo backend. Default: distributed.gpus of the config (one)."),
    nnodes: int = typer.Option(1, "--nnodes", min=1, max=4096, help="Machines taking part (the same command on "
                               "each, with its --node-rank)."),
    node_rank: int = typer.Option(0, "--node-rank", min=0, max=4095, help="This machine's index, 0..nnodes-1."),
    master_addr: str = typer.Option("127.0.0.1", "--master-addr", envvar="MASTER_ADDR",
                                    help="Address of node 0 (rendezvous)."),
    master_port: int = typer.Option(29500, "--master-port", envvar="MASTER_PORT", min=1, max=65535,
                                    help="Port of the rendezvous on node 0."),
    probe: bool = typer.Option(False, "--probe", help="Train a few steps of each stage's worst micro batch and "
                               "report the measured peak memory beside the estimate, tokens/s and the ETA; "
                               "nothing is written in the run directory."),
    probe_steps: int = typer.Option(4, "--probe-steps", min=3, max=100, help="Optimizer steps per stage of --probe."),
    probe_out: Path | None = typer.Option(None, "--probe-out", help="Also write --probe's report to this file "
                                          "(probe.json)."),
    json_out: bool = typer.Option(False, "--json", help="With --probe: print the report as JSON."),
) -> None:
    """Fine-tune: validate, then train each phase and stage, writing checkpoints, metrics and adapters."""
    from nova.config.load import load_yaml_config

    loaded = load_yaml_config(config, set_)
    if probe:
        raise typer.Exit(probe_command(loaded, phase, probe_steps, probe_out, json_out))
    if dry_run:
        from nova.train.dryrun import dry_run as run_dry

        result = run_dry(loaded, phase)
        for line in result.lines:
            echo(line)
        if not result.ok:
            echo("missing before this config can train here:", err=True)
            for line in result.missing:
                echo(f"  {line}", err=True)
            raise typer.Exit(1)
        echo("dry run ok: nothing was trained")
        return
    hint = " ".join(["nova train --config", str(config), *[f"--set {v}" for v in set_ or []],
                     *(["--phase", phase] if phase else [])])
    from nova.plan import make_plan
    from nova.train import launch
    from nova.train.machinery import distributed

    hint = os.environ.get(launch.RERUN_ENV) or hint  # a rank: the launch command, flags included

    plan = make_plan(loaded)  # once: the launch, preflight and training all read it
    here = distributed.current()
    if not here.distributed and os.environ.get(distributed.LAUNCHED_ENV) is None:
        local = launch.ranks_on_this_node(plan.distributed, nproc_per_node)
        if node_rank >= nnodes:
            raise NovaError(f"--node-rank {node_rank} is not below --nnodes {nnodes}")
        if local > 1 or nnodes > 1:
            if not no_preflight:
                _preflight_or_stop(loaded, plan)
            ranks = launch.Launch(local, nnodes, node_rank, master_addr, master_port)
            echo(ranks.describe(cuda=_cuda()))
            rank_args = [a for pair in [("--config", str(config)), *[("--set", v) for v in set_ or []],
                                        *([("--phase", phase)] if phase else [])] for a in pair]
            rank_args += [f for f, on in (("--force", force), ("--fresh", fresh),
                                          ("--resume-with-changes", resume_with_changes)) if on]
            raise typer.Exit(launch.run_ranks(ranks, [*rank_args, "--no-preflight"], hint))
    if not no_preflight and here.main:
        _preflight_or_stop(loaded, plan)
    from nova.train.pipeline import run_config

    try:
        results = run_config(loaded, phase=phase, force=force, fresh=fresh, resume_with_changes=resume_with_changes,
                             rerun_hint=hint, plan=plan, force_gates=force_gates)
    except Exception as exc:  # a dead peer mid-collective: one line, not gloo's or nccl's traceback
        lost = distributed.peer_lost(exc, here, hint)
        if lost is None:
            raise
        raise lost from exc
    if not results:
        raise NovaError("nothing to train")


def run_probe_quietly(loaded: object, json_out: bool, phase: str | None = None, steps: int = 4,
                      out: Path | None = None) -> Any:
    """The probe's report (nova.train.probe); with ``json_out`` nothing else reaches stdout."""
    from nova.console import RunLog
    from nova.train.probe import run_probe

    log = RunLog(None, stream=sys.stderr) if json_out else RunLog(None)
    return run_probe(loaded, phase=phase, steps=steps, out=out, log=log)  # type: ignore[arg-type]


def probe_command(loaded: object, phase: str | None, steps: int, out: Path | None, json_out: bool) -> int:
    """``--probe``: print the probe's report; exit 1 when a stage does not fit."""
    import json

    report = run_probe_quietly(loaded, json_out, phase, steps, out)
    if json_out:
        typer.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=True))
    else:
        for line in report.lines():
            echo(line)
    return 0 if report.fits else 1


def _cuda() -> bool:
    from nova.lazy import require

    return bool(require("torch").cuda.is_available())


def _preflight_or_stop(loaded: object, plan: object) -> None:
    """Run preflight (data is validated by training itself right after); stop on a failing verdict."""
    from nova.preflight import run_preflight

    report = run_preflight(loaded, check_data=False, plan=plan)  # type: ignore[arg-type]
    shown = [c for c in report.checks if c.status in ("warn", "fail")]
    for check in shown:
        echo(f"preflight {check.status}: {check.name}: {check.message}")
        if check.fix:
            echo(f"  fix: {check.fix}")
    if report.verdict == "fail":
        raise NovaError("preflight failed; nothing was trained",
                        hint="fix the problems above, see 'nova preflight --config ...', or pass --no-preflight")
