"""Console output of a run, copied to a log file under ``logs/`` so tmux scrollback is not the only record."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO


class RunLog:
    """Prints lines to the console and appends them to a log file.

    Lines are buffered until ``attach`` is called, which happens only once config and data
    have passed validation: a run that fails its checks leaves no log file behind.
    """

    def __init__(self, log_file: Path | None = None, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self.stream = stream or sys.stdout
        self.log_file = log_file
        self.quiet = quiet  # ranks other than 0 of a distributed run: rank 0 speaks for all
        self._attached = False
        self._pending: list[str] = []

    def attach(self) -> None:
        """Start writing the log file, beginning with the lines said so far."""
        if self._attached or self.log_file is None or self.quiet:
            return
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._attached = True
        with self.log_file.open("a", encoding="utf-8") as fh:
            fh.writelines(self._pending)
        self._pending = []

    def say(self, line: str = "") -> None:
        if self.quiet:
            return
        from tqdm import tqdm  # write above an active progress bar instead of into it

        tqdm.write(line, file=self.stream)
        self.stream.flush()
        stamped = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n"
        if not self._attached:
            self._pending.append(stamped)
        elif self.log_file is not None:
            with self.log_file.open("a", encoding="utf-8") as fh:
                fh.write(stamped)


def human_seconds(s: float) -> str:
    s = round(s)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def quiet_libraries(debug: bool = False) -> None:
    """Keep the console to nova's own lines: no library progress bars (they draw non-ASCII
    blocks) and no repeated library warnings, unless ``--debug`` asks for everything.

    nova's own progress bar passes ``disable=False`` explicitly, so TQDM_DISABLE spares it.
    """
    import logging
    import os
    import warnings

    if debug or os.environ.get("NOVA_DEBUG") == "1":
        return
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("bitsandbytes", "transformers", "datasets", "accelerate", "peft", "trl", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
