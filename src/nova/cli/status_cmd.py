"""``nova status PATH``: how far a run or pipeline is, whether it is alive, and what it alerted.

Reads files only (no torch), so it answers at once, e.g. ``watch -n 30 nova status checkpoints/x``
in a second tmux pane.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from nova.cli.options import JsonOpt
from nova.console import echo

PathArg = Annotated[Path, typer.Argument(help="A run directory, or a pipeline output directory (has pipeline.json).",
                                         show_default=False)]


def status(path: PathArg, json_out: JsonOpt = False) -> None:
    """Show each phase: status, stage and step, losses, tokens/s, ETA, checkpoint, alerts, process."""
    from nova.monitor.render import status_lines
    from nova.monitor.status import read_status

    result = read_status(path)
    if json_out:
        typer.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=True))
        return
    for line in status_lines(result):
        echo(line)
