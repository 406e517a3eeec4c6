"""``nova``: the entry point. Registers the commands and is the one place errors are formatted.

Library code raises ``NovaError`` and never exits; here each error becomes its lines on stderr
and a non-zero exit code, with a traceback only under ``--debug``.
"""

from __future__ import annotations

import os
import sys

import typer

from nova import __version__
from nova.cli import (
    config_cmd,
    data_cmd,
    export_cmd,
    infer_cmd,
    merge_cmd,
    models_cmd,
    plot_cmd,
    preflight_cmd,
    status_cmd,
    train_cmd,
)
from nova.errors import NovaError

app = typer.Typer(
    name="nova",
    help="Config-driven QLoRA fine-tuning: preflight, train, merge, infer, export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.command("preflight")(preflight_cmd.preflight)
app.command("train")(train_cmd.train)
app.command("merge")(merge_cmd.merge)
app.command("infer")(infer_cmd.infer)
app.command("export")(export_cmd.export)
app.command("status")(status_cmd.status)
app.command("plot")(plot_cmd.plot)
app.command("config")(config_cmd.config)
app.add_typer(models_cmd.app, name="models")
app.add_typer(data_cmd.app, name="data")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"nova {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Config-driven QLoRA fine-tuning: preflight, train, merge, infer, export."""
    if debug:
        os.environ["NOVA_DEBUG"] = "1"
    from nova.console import quiet_libraries

    quiet_libraries(debug)  # before any command imports torch or transformers


def run() -> None:
    """Console-script entry: run the app, turning errors into one clear message and an exit code."""
    debug = "--debug" in sys.argv or os.environ.get("NOVA_DEBUG") == "1"
    try:
        code = app(standalone_mode=False)
    except NovaError as exc:
        if debug:
            raise
        lines = exc.lines()
        typer.echo(f"error: {lines[0]}", err=True)
        for line in lines[1:]:
            typer.echo(line, err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    except Exception as exc:  # the last line of defence: one line, not a traceback
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if debug:
            raise
        typer.echo(f"error: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
                   err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    run()
