"""``nova train``: run a phase or pipeline config."""

from __future__ import annotations

import typer

from nova.cli.options import ConfigOpt, SetOpt
from nova.errors import NovaError


def train(
    config: ConfigOpt,
    set_: SetOpt = None,
    phase: str | None = typer.Option(None, "--phase", help="Run only this phase (its inputs must exist)."),
    force: bool = typer.Option(False, "--force", help="Retrain phases that already finished."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate config, data and model access; print the plan."),
) -> None:
    """Fine-tune: validate, then train each phase and stage, writing checkpoints, metrics and adapters."""
    from nova.config.load import load_yaml_config

    loaded = load_yaml_config(config, set_)
    if dry_run:
        from nova.train.dryrun import dry_run as run_dry

        result = run_dry(loaded, phase)
        for line in result.lines:
            typer.echo(line)
        if not result.ok:
            typer.echo("missing before this config can train here:", err=True)
            for line in result.missing:
                typer.echo(f"  {line}", err=True)
            raise typer.Exit(1)
        typer.echo("dry run ok: nothing was trained")
        return
    from nova.train.plan import run_config

    results = run_config(loaded, phase=phase, force=force)
    if not results:
        raise NovaError("nothing to train")
