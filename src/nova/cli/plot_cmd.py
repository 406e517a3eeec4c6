"""``nova plot RUN_DIR``: redraw <run>/plots/loss.png from metrics.jsonl and print its path.

Given a pipeline output directory, draws every phase that has metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nova.console import echo

RunDirArg = Annotated[Path, typer.Argument(help="A run directory (has metrics.jsonl), or a pipeline output "
                                           "directory.", show_default=False)]


def plot(run_dir: RunDirArg) -> None:
    """Draw train and eval loss, learning rate and (DPO) reward margins and accuracy to plots/loss.png."""
    from nova.errors import NovaError
    from nova.monitor.plot import plot_run
    from nova.monitor.status import read_status
    from nova.runs.layout import PIPELINE, RunDir

    if (run_dir / PIPELINE).exists() and not RunDir(run_dir).metrics.exists():
        dirs = [Path(p.run_dir) for p in read_status(run_dir).phases if RunDir(Path(p.run_dir)).metrics.exists()]
        if not dirs:
            raise NovaError(f"no phase of the pipeline in {run_dir} has metrics yet",
                            hint="plots appear once a phase has logged its first step")
        for d in dirs:
            echo(str(plot_run(d)))
        return
    echo(str(plot_run(run_dir)))
