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
    demo_cmd,
    eval_cmd,
    export_cmd,
    infer_cmd,
    init_cmd,
    merge_cmd,
    models_cmd,
    plot_cmd,
    preflight_cmd,
    status_cmd,
    train_cmd,
    ui_cmd,
)
from nova.console import echo
from nova.errors import NovaError, printable

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
app.command("eval")(eval_cmd.eval_)
app.command("status")(status_cmd.status)
app.command("plot")(plot_cmd.plot)
app.command("config")(config_cmd.config)
app.command("init")(init_cmd.init)
app.command("ui")(ui_cmd.ui)
app.command("demo")(demo_cmd.demo)
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


def _say(line: str) -> None:
    """The one place errors are printed: ASCII only, so a file name that is not UTF-8 (lone
    surrogates in Python) or a non-ASCII value in a message cannot fail the printing itself; on a
    terminal wrapped between words to its width."""
    echo(printable(line), err=True)


def _end_progress_bars() -> None:
    """Close the progress bars an error interrupted, so the error starts a line of its own instead of
    trailing a bar's last refresh ("d/sft:  0%| ... 0/10 [...]error: ..."); on a rank of nova train
    --nproc-per-node the launcher prints the error after the rank exits, on the same stream."""
    std = sys.modules.get("tqdm.std")  # only when a bar can exist: never imports tqdm
    for bar in list(getattr(getattr(std, "tqdm", None), "_instances", ())):
        bar.close()


def _click_exceptions() -> tuple[type[Exception], ...]:
    """typer >= 0.29 raises its vendored copy of click's exceptions, older typer raises click's own."""
    import click

    kinds: list[type[Exception]] = [click.ClickException]
    try:
        from typer._click.exceptions import ClickException as VendoredClickException
    except ImportError:  # typer before 0.29
        pass
    else:
        kinds.append(VendoredClickException)
    return tuple(kinds)


def _show_click_error(exc: Exception) -> int:
    """A usage error (bad option value, missing argument) as click prints it: usage line, then the error."""
    import io

    buffer = io.StringIO()
    exc.show(file=buffer)  # type: ignore[attr-defined]
    for line in buffer.getvalue().rstrip("\n").splitlines():
        _say(line)
    return int(getattr(exc, "exit_code", 2))


def run() -> None:
    """Console-script entry: run the app, turning errors into one clear message and an exit code."""
    debug = "--debug" in sys.argv or os.environ.get("NOVA_DEBUG") == "1"
    try:
        code = app(standalone_mode=False)
    except NovaError as exc:
        if debug:
            raise
        _end_progress_bars()
        lines = exc.lines()
        from nova.train.launch import report_to_launcher

        reported = report_to_launcher(exc.exit_code, lines)
        if reported is not None:  # a rank of nova train --nproc-per-node: the parent says it
            sys.exit(reported)
        _say(f"{exc.label}: {lines[0]}")
        for line in lines[1:]:
            _say(line)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _say("interrupted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        _say("aborted")
        sys.exit(1)
    except Exception as exc:  # the last line of defence: one line, not a traceback
        from nova.files import os_error

        _end_progress_bars()
        fault = os_error(exc) if isinstance(exc, OSError) else None
        if fault is not None and not debug:  # a full disk, a read-only or foreign path: the path and the fix
            _say(f"error: {fault.lines()[0]}")
            for line in fault.lines()[1:]:
                _say(line)
            sys.exit(fault.exit_code)
        if isinstance(exc, _click_exceptions()):
            sys.exit(_show_click_error(exc))
        if debug:
            raise
        try:
            detail = f"{type(exc).__name__}: {exc}"
        except Exception:  # str() itself can fail (an int too long to convert, a broken __str__)
            detail = type(exc).__name__
        _say(f"error: internal error: {detail} (rerun with --debug for the traceback)")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    run()
