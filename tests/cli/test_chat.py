"""``nova infer --chat``: Ctrl-C stops the answer being written and returns to the prompt, the chat goes on
without that turn; Ctrl-C at the prompt does not leave; Ctrl-D (end of input) or /exit does."""

from __future__ import annotations

import io
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from nova.cli import infer_cmd


class Lines(io.StringIO):
    """Standard input whose n-th readline raises KeyboardInterrupt (Ctrl-C at the prompt)."""

    def __init__(self, text: str, interrupt_at: int | None = None) -> None:
        super().__init__(text)
        self.calls, self.interrupt_at = 0, interrupt_at

    def readline(self, *args: Any) -> str:  # type: ignore[override]
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        return super().readline(*args)


def chat(monkeypatch: pytest.MonkeyPatch, text: str, interrupt_at: int | None = None) -> list[list[dict[str, str]]]:
    """Run the chat loop; the first answer is interrupted by Ctrl-C. Returns the history each answer saw."""
    seen: list[list[dict[str, str]]] = []

    def say(loaded: Any, history: list[dict[str, str]], how: Any, stream: bool | None = None) -> str:
        seen.append([dict(m) for m in history])
        if len(seen) == 1:
            raise KeyboardInterrupt  # Ctrl-C while the first answer streams
        return f"answer {len(seen)}"

    monkeypatch.setattr(infer_cmd, "_say", say)
    monkeypatch.setattr(sys, "stdin", Lines(text, interrupt_at))
    infer_cmd._chat(SimpleNamespace(description="tiny"), [], SimpleNamespace())
    return seen


def test_ctrl_c_stops_the_answer_and_the_chat_goes_on(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    seen = chat(monkeypatch, "first\nsecond\n/exit\nnever read\n")
    out = capsys.readouterr().out
    assert "(stopped; this turn is left out of the conversation)" in out
    assert len(seen) == 2 and seen[1] == [{"role": "user", "content": "second"}]  # the stopped turn is gone
    assert out.count("you> ") == 3  # back at the prompt after the stop, and once more for /exit


def test_ctrl_c_at_the_prompt_stays_and_ctrl_d_leaves(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    seen = chat(monkeypatch, "\nfirst\nsecond\n", interrupt_at=1)  # Ctrl-C, then an empty line, then two turns
    out = capsys.readouterr().out
    assert "(Ctrl-D or /exit leaves)" in out
    assert [m["content"] for m in seen[-1]] == ["second"] and len(seen) == 2
    assert out.endswith("you> \n")  # end of input: a newline so the shell prompt starts on its own line
