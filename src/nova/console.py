"""What nova prints, and how: lines that fit the terminal, a run's log file, and steps that take a while.

Three things live here, below every other module, so the CLI, training, data and model code all
print the same way:

- ``echo`` and ``wrap``: on a terminal a line longer than the window is broken between words with
  a hanging indent (a ``label:  value`` line continues under its value), never mid-word; piped
  output (a file, ``grep``, a log) stays one record per line, as written.
- ``RunLog``: a run's console lines, copied (unwrapped, time-stamped) to ``logs/<config>-<time>.log``.
- ``task``: a step that can take longer than a few seconds (loading a model, tokenizing, evaluating,
  smoke prompts, scoring holdouts, merging, exporting) says what it is doing when it starts, counts
  on a terminal as it goes, and reports itself to the run's activity record, which ``nova status``
  shows ("smoke prompts 1/2").
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TextIO

MIN_WIDTH = 40  # narrower than this, wrapping makes things worse: leave the lines to the terminal
CONTINUE = 4  # the hanging indent of a line without a label column
BREAKS = "/\\,;=&"  # where a word longer than a whole line may be split (a path, a URL, a list)
_LABEL = re.compile(r"^(\s*)\S+(?: \S+)*? {2,}(?=\S)")  # "  loss:       train ...": continue under "train"
_BRACKET = re.compile(r"^\s*\[[^\]\s]{1,60}\] (?=\S)")  # "[doica/sft] done: ...": continue after the label
_TOKENS = re.compile(r"\s+|\S+")


def terminal_width(stream: TextIO | None = None) -> int | None:
    """The width to wrap to on ``stream``, or None when it is not a terminal (piped output is left as it is).

    ``COLUMNS`` wins when set (as shells and ``shutil`` do), so a test or a narrow pane can ask for 80.
    """
    stream = stream if stream is not None else sys.stdout
    try:
        if not stream.isatty():
            return None
    except (AttributeError, ValueError):  # closed, or no isatty at all
        return None
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        width = int(columns)
    else:
        try:
            width = os.get_terminal_size(stream.fileno()).columns
        except (AttributeError, ValueError, OSError):
            import shutil

            width = shutil.get_terminal_size().columns
    return width if width >= MIN_WIDTH else None


def hanging_indent(line: str, width: int) -> int:
    """Where a wrapped line continues: under the value of a ``label   value`` line, after a ``[phase/stage]``
    prefix, else a little right of the line's own start; never past half the width."""
    lead = len(line) - len(line.lstrip(" "))
    for pattern in (_LABEL, _BRACKET):
        m = pattern.match(line)
        if m and lead < m.end() <= width // 2:
            return m.end()
    return min(lead + CONTINUE, width // 2)


def _split_long(word: str, first: int, room: int) -> list[str]:
    """A word longer than a whole line, cut after path and list separators: ``first`` characters to finish
    the current line, then pieces of ``room`` (a piece without any separator stays whole: the terminal may
    then break it, nova does not)."""
    pieces: list[str] = []
    current = ""
    for part in re.split(f"(?<=[{re.escape(BREAKS)}])", word):
        if len(current) + len(part) > (room if pieces else first) and (current or not pieces):
            pieces.append(current)
            current = ""
        current += part
    return [p for p in [*pieces, current] if p]


def wrap(line: str, width: int | None, indent: int | None = None) -> list[str]:
    """``line`` as lines of at most ``width`` characters, broken between words; continuation lines start
    ``indent`` spaces in (default: ``hanging_indent``). ``width`` None: the line as it is."""
    if width is None or len(line) <= width:
        return [line]
    pad = " " * (hanging_indent(line, width) if indent is None else min(indent, width // 2))
    out: list[str] = []
    current, space = "", ""
    for token in _TOKENS.findall(line):
        if token.isspace():
            space = token
            continue
        first = width - len(current) - len(space)
        words = _split_long(token, first, width - len(pad)) if len(pad) + len(token) > width else [token]
        for i, word in enumerate(words):
            gap = "" if i else (space if word else "")
            if not current.strip() or len(current) + len(gap) + len(word) <= width:
                current += gap + word
            else:
                out.append(current.rstrip())
                current = pad + word
        space = ""
    out.append(current.rstrip())
    return out


def ascii_only(text: str) -> str:
    """Output is ASCII: anything else (a model's answer, a file name) is escaped, never a crash."""
    return text.encode("ascii", "backslashreplace").decode("ascii")


def echo(line: str = "", *, err: bool = False, indent: int | None = None) -> None:
    """Print one record: wrapped to the terminal's width on a terminal, one line when piped."""
    stream = sys.stderr if err else sys.stdout
    text = "\n".join(wrap(ascii_only(line), terminal_width(stream), indent))
    stream.write(text + "\n")
    stream.flush()


class RunLog:
    """Prints lines to the console and appends them to a log file.

    Lines are buffered until ``attach`` is called, which happens only once config and data
    have passed validation: a run that fails its checks leaves no log file behind. The console
    copy is wrapped to the terminal; the file keeps each line whole, time-stamped.

    ``activity`` (set by the training pipeline for the phase it runs) is told what the run is doing
    whenever a ``task`` starts, counts, or ends: the run's activity record that ``nova status`` reads.
    """

    def __init__(self, log_file: Path | None = None, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self.stream = stream or sys.stdout
        self.log_file = log_file
        self.quiet = quiet  # ranks other than 0 of a distributed run: rank 0 speaks for all
        self.activity: Callable[[dict[str, Any] | None], None] | None = None
        self.doing: list[Task] = []  # the tasks under way, innermost last
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

    def say(self, line: str = "", *, indent: int | None = None) -> None:
        if self.quiet:
            return
        from tqdm import tqdm  # write above an active progress bar instead of into it

        tqdm.write("\n".join(wrap(ascii_only(line), terminal_width(self.stream), indent)), file=self.stream)
        self.stream.flush()
        stamped = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n"
        if not self._attached:
            self._pending.append(stamped)
        elif self.log_file is not None:
            with self.log_file.open("a", encoding="utf-8") as fh:
                fh.write(stamped)

    def report(self) -> None:
        """Tell ``activity`` what is under way now (the innermost task), or that nothing is."""
        if self.activity is None:
            return
        with suppress(OSError):  # a full disk must not stop training over a status file
            self.activity(self.doing[-1].record() if self.doing else None)


_LOGS: list[RunLog] = []  # the run logs speaking now (training); a task reports to the innermost


@contextmanager
def speaking(log: RunLog) -> Iterator[RunLog]:
    """While inside, ``task`` (called from data, model or training code) says its lines through ``log``."""
    _LOGS.append(log)
    try:
        yield log
    finally:
        _LOGS.remove(log)


class Task:
    """A step that can take a while. Said when it starts (unless ``quiet``), counted with a bar on a terminal
    (shown only once it has run a second), a line every ``LINE_EVERY`` seconds when the output is piped,
    and reported to the run's activity record (at most once a second)."""

    LINE_EVERY = 30.0
    RECORD_EVERY = 1.0

    def __init__(self, what: str, total: int | None = None, *, log: RunLog | None = None, quiet: bool = False,
                 line: str | None = None, err: bool = True, extra: dict[str, Any] | None = None) -> None:
        self.what, self.total, self.log, self.quiet = what, total, log, quiet
        self.line = line or what + (f" ({total})" if total else "")  # what is said when it starts
        self.extra = extra or {}
        self.stream = log.stream if log is not None else (sys.stderr if err else sys.stdout)
        self.done = 0
        self.started = time.time()
        self._lined = self.started
        self._recorded = 0.0  # the first count is reported at once
        self._bar: Any = None

    def record(self) -> dict[str, Any]:
        """What the activity record holds: what, done, total, since."""
        return {"what": self.what, "done": self.done if self.total else None, "total": self.total,
                "since": self.started, **self.extra}

    def _say(self, line: str) -> None:
        if self.log is not None:
            self.log.say(line)
        else:
            echo(line, err=self.stream is sys.stderr)

    def __enter__(self) -> Task:
        if not self.quiet:
            self._say(self.line)
        if self.total and terminal_width(self.stream) is not None and not (self.log and self.log.quiet):
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=self.what, ascii=True, leave=False, delay=1.0, disable=False,
                             dynamic_ncols=True, mininterval=0.5, file=self.stream)
        if self.log is not None:
            self.log.doing.append(self)
            self.log.report()
        return self

    def advance(self, n: int = 1) -> None:
        """``n`` more of ``total`` done."""
        self.done += n
        now = time.time()
        if self._bar is not None:
            self._bar.update(n)
        elif self.total and terminal_width(self.stream) is None and now - self._lined >= self.LINE_EVERY:
            self._lined = now
            self._say(f"{self.what}: {self.done}/{self.total}")
        if self.log is not None and now - self._recorded >= self.RECORD_EVERY:
            self._recorded = now
            self.log.report()

    def note(self, line: str) -> None:
        """Say how far a step of unknown length got (at most every LINE_EVERY seconds; the caller decides)."""
        self._say(line)
        if self.log is not None:
            self.log.report()

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()
        if self.log is not None and self in self.log.doing:
            self.log.doing.remove(self)
            self.log.report()


def task(what: str, total: int | None = None, *, quiet: bool = False, line: str | None = None) -> Task:
    """A ``Task`` that speaks through the run log in use (training), else on stderr (a CLI command).

    ``what`` is short (the activity record, the bar); ``line`` what is said when it starts (default:
    ``what`` and the total)."""
    return Task(what, total, log=_LOGS[-1] if _LOGS else None, quiet=quiet, line=line)


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
