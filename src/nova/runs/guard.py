"""Whether a run directory may be read as a finished model: merge, export and infer ask here first.

A run is finished when ``COMPLETE`` is there (written last, after the adapter, the cards and the
smoke answers) and no process holds its lock. Anything else is refused with one line: a live run
names its process (pid and host) and says to wait for it (``nova status RUN``); an unfinished one
says that the ``nova train`` command that started it resumes it. Merging, exporting or answering
with a run that is still training would ship or serve an adapter that is about to change, and
resuming a live run would collide with it, so neither is ever suggested for a live run.
"""

from __future__ import annotations

from pathlib import Path

from nova.errors import NovaError
from nova.runs.layout import RunDir
from nova.runs.lock import current_holder


def require_finished(run_dir: Path, command: str, earlier: list[Path] | None = None) -> None:
    """Refuse (NovaError) a run that is training now or did not finish; ``earlier``: the run
    directories of the chain's earlier phases, refused only while they are being trained again."""
    run = RunDir(Path(run_dir))
    for path in [run.path, *(earlier or [])]:
        holder = current_holder(path)
        if holder is not None:
            raise NovaError(f"{path} is being trained right now ({holder}); {command} reads only a finished run",
                            hint=f"wait until it finishes: nova status {path}")
    if not run.complete_marker.exists():
        raise NovaError(f"{run.path} did not finish training (no {run.complete_marker.name}); {command} reads only "
                        "a finished run", hint=f"see where it stopped with nova status {run.path}; the nova train "
                        "command that started it resumes it")
