"""Errors meant for people.

Library code raises these; only ``nova.cli`` turns them into a message and an exit code.
Each error carries *what* went wrong, *where* (file, key, line) and *how to fix it*, so the
CLI can print one clear line (or one line per problem) without a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


def printable(text: str) -> str:
    """``text`` with what cannot be printed as ASCII escaped (``\\xff``, ``\\udcff``).

    A file name that is not UTF-8 reaches Python as lone surrogates ('\\udcff'); writing those, or
    handing them to pydantic (which encodes messages as UTF-8), raises UnicodeEncodeError.
    """
    return text.encode("ascii", "backslashreplace").decode("ascii")


class NovaError(Exception):
    """A user-facing failure: bad config, bad data, missing file, impossible request."""

    exit_code = 2
    label = "error"  # the word the CLI prints before the message

    def __init__(self, message: str, *, hint: str | None = None, where: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.where = where

    def lines(self) -> list[str]:
        """The lines the CLI prints, first line first."""
        head = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            head = f"{head} ({self.hint})"
        return [head]

    def __str__(self) -> str:
        return "\n".join(self.lines())


@dataclass(frozen=True)
class Problem:
    """One validation problem: where it is, what is wrong, and how to fix it."""

    where: str
    message: str
    hint: str | None = None

    def render(self) -> str:
        text = f"{self.where}: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text


class ProblemList(NovaError):
    """Several problems reported together, so a user fixes them in one pass."""

    def __init__(self, title: str, problems: list[Problem], *, max_shown: int = 20) -> None:
        super().__init__(title)
        self.title = title
        self.problems = list(problems)
        self.max_shown = max_shown

    def lines(self) -> list[str]:
        shown = [p.render() for p in self.problems[: self.max_shown]]
        if len(self.problems) == 1:
            return [f"{self.title}: {shown[0]}"]
        out = [f"{self.title} ({len(self.problems)} problems):", *[f"  {s}" for s in shown]]
        rest = len(self.problems) - len(shown)
        if rest > 0:
            out.append(f"  ... and {rest} more")
        return out


class ConfigError(ProblemList):
    """The config file (or an override) is invalid."""


class DataError(ProblemList):
    """The data has records that cannot be trained on."""


class TrainingStopped(NovaError):
    """Training stopped on purpose (signal, NaN loss); the run can be resumed."""

    exit_code = 3
    label = "stopped"
