"""``nova status [PATH] [--watch [SECONDS]]``: how far runs are, whether they are alive, what they alerted.

Reads files only (no torch), so it answers at once from a second tmux pane. With no path it lists every
run and pipeline under the default output root (``checkpoints``); ``--watch`` redraws the same screen in
place every few seconds (plain text and two ANSI cursor codes, no curses: it works over SSH) until no
run it shows is alive.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from nova.cli.options import JsonOpt
from nova.console import echo, terminal_width, wrap

PathArg = Annotated[Path | None, typer.Argument(
    help="A run directory, a pipeline output directory (has pipeline.json), or a directory of runs. "
    "Default: every run under checkpoints/.", show_default=False)]
WatchOpt = Annotated[float | None, typer.Option(
    "--watch", "-w", is_flag=False, flag_value=5.0, min=0.5, metavar="[SECONDS]",
    help="Redraw every SECONDS (default 5) until no run shown is alive; Ctrl-C stops watching.")]


def status(path: PathArg = None, json_out: JsonOpt = False, watch: WatchOpt = None) -> None:
    """Each phase: state, stage and step, losses, tokens/s, ETA or what it is doing now, checkpoint, alerts,
    process. With no path: one line per phase of every run under checkpoints/."""
    from nova.runs.layout import DEFAULT_ROOT, PIPELINE, RunDir

    target = path if path is not None else Path(DEFAULT_ROOT)
    listing = path is None or (target.is_dir() and not (target / PIPELINE).exists()
                               and not RunDir(target).looks_like_run)
    show = _listing(target) if listing else _one(target)
    if json_out:
        typer.echo(json.dumps(show()[2], indent=2, ensure_ascii=True))
        return
    if watch is None:
        for line in show()[0]:
            echo(line)
        return
    _watch(show, watch)


Shown = tuple[list[str], bool, object]  # the lines, whether a run shown is alive, the JSON form


def _one(path: Path) -> Callable[[], Shown]:
    def show() -> Shown:
        from nova.monitor.render import status_lines
        from nova.monitor.status import read_status
        from nova.runs.process import read_process

        result = read_status(path)
        alive = any(p.process.state == "running" for p in result.phases) or (
            result.kind == "pipeline" and read_process(path).state == "running")  # between two phases
        return status_lines(result), alive, result.to_dict()

    return show


def _listing(root: Path) -> Callable[[], Shown]:
    def show() -> Shown:
        from nova.monitor.render import root_lines
        from nova.monitor.status import read_root

        entries = read_root(root) if root.is_dir() else []
        shown = [(_relative(p), s) for p, s in entries]
        alive = any(not isinstance(s, Exception) and any(ph.process.state == "running" for ph in s.phases)
                    for _, s in entries)
        data = {"root": str(root), "runs": [{**(s.to_dict() if not isinstance(s, Exception) else
                                                 {"error": getattr(s, "message", str(s))}), "path": p}
                                            for p, s in shown]}
        return root_lines(str(root), shown), alive, data

    return show


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _watch(show: Callable[[], Shown], every: float) -> None:
    """Redraw in place on a terminal (cursor home, each line cleared to its end, the rest of the screen
    cleared); piped, one block per refresh. Stops when nothing shown is alive, or on Ctrl-C."""
    try:
        while True:
            lines, alive, _ = show()
            head = f"nova status, every {every:g} s, {time.strftime('%H:%M:%S')} (Ctrl-C stops watching)"
            if not alive:
                head = f"nova status, {time.strftime('%H:%M:%S')}: no run shown is alive; stopped watching"
            _draw([head, *lines], terminal_width())
            if not alive:
                return
            time.sleep(every)
    except KeyboardInterrupt:
        sys.stdout.write("\n")


def _draw(lines: list[str], width: int | None) -> None:
    if width is None:
        sys.stdout.write("\n".join(lines) + "\n\n")
    else:
        shown = [piece for line in lines for piece in wrap(line, width)]
        sys.stdout.write("\x1b[H" + "".join(f"{piece}\x1b[K\n" for piece in shown) + "\x1b[J")
    sys.stdout.flush()
