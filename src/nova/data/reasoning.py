"""Reasoning in records: ``<think>...</think>`` at the start of a reply, or a separate field.

Datasets carry a reply's reasoning in one of two shapes: inline, as a ``<think>...</think>``
block opening the assistant content (Qwen3, DeepSeek-R1 and QwQ outputs), or beside it, as
``reasoning_content`` (Qwen3, DeepSeek), ``reasoning`` or ``thinking`` (gpt-oss). nova reads
both and keeps one form: the reply's text in ``content`` and its reasoning in
``reasoning_content`` (the name transformers treats as the standard one). How it is handed to
a chat template is decided per template (nova.data.template), so the data does not have to
match the model's convention.

A think block that is opened and never closed, opened twice, or closed without being opened
is a record problem: training on it would teach the model broken tags.
"""

from __future__ import annotations

from typing import Any

OPEN, CLOSE = "<think>", "</think>"
FIELD = "reasoning_content"
# The names reasoning is read from, in the order they are preferred when a record has several.
FIELDS = ("reasoning_content", "reasoning", "thinking")


class ReasoningProblem(ValueError):
    """A reply whose reasoning cannot be read; ``reason`` is the report's slug."""

    def __init__(self, reason: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.hint = hint


_FIELD_SET = frozenset(FIELDS)


def might_have_reasoning(message: dict[str, Any]) -> bool:
    """Cheap test: only these messages need the full parse (most plain chats skip it)."""
    return "think>" in message["content"] or (len(message) > 2 and not _FIELD_SET.isdisjoint(message))


def split_reasoning(message: dict[str, Any], where: str) -> bool:
    """Move an assistant message's reasoning into ``reasoning_content`` (in place); True when it has
    some. An empty think block (``<think>\\n\\n</think>``, what non-thinking outputs carry) is
    dropped: the reply is plain."""
    given = _field_reasoning(message, where)
    reasoning, content = inline_reasoning(message["content"], where)
    if reasoning and given:
        raise ReasoningProblem("bad_reasoning", f"{where} gives its reasoning twice (a <think> block in the "
                               "content and a reasoning field)", "keep one of them")
    reasoning = reasoning or given
    if reasoning and (OPEN in reasoning or CLOSE in reasoning):
        raise ReasoningProblem("bad_reasoning", f"{where}: the reasoning holds another {OPEN} or {CLOSE} tag "
                               "(nested think tags)", "a reply has one think block, at its start")
    message["content"] = content
    if not content.strip() and not message.get("tool_calls"):
        raise ReasoningProblem("empty_field", f"{where} has reasoning but no reply after it",
                               "add the answer after </think>")
    if reasoning:
        message[FIELD] = reasoning
    return bool(reasoning)


def _field_reasoning(message: dict[str, Any], where: str) -> str:
    """The reasoning given as a field (every name removed from the message), or ''."""
    found: dict[str, str] = {}
    for name in FIELDS:
        if name not in message:
            continue
        value = message.pop(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ReasoningProblem("non_string_content", f"{where}.{name} is {type(value).__name__}, expected "
                                   "a string")
        if value.strip():
            found[name] = value.strip()
    if len(set(found.values())) > 1:
        raise ReasoningProblem("bad_reasoning", f"{where} has different reasonings in {' and '.join(found)}",
                               "keep one reasoning field")
    return next(iter(found.values()), "")


def inline_reasoning(content: str, where: str) -> tuple[str, str]:
    """(reasoning, reply) of a content that may open with a think block; ('', content) without one."""
    start = content.lstrip()
    if not start.startswith(OPEN):
        if OPEN in content:
            raise ReasoningProblem("bad_reasoning", f"{where} has {OPEN} after the start of the reply",
                                   "the think block must open the reply")
        if CLOSE in content:
            raise ReasoningProblem("bad_reasoning", f"{where} has {CLOSE} without an opening {OPEN} at the start",
                                   f"start the reply with {OPEN}")
        return "", content
    end = start.find(CLOSE)
    if end < 0:
        raise ReasoningProblem("bad_reasoning", f"{where}: {OPEN} is never closed (no {CLOSE})",
                               f"close the reasoning with {CLOSE} before the answer")
    inner, rest = start[len(OPEN):end], start[end + len(CLOSE):]
    if OPEN in inner:
        raise ReasoningProblem("bad_reasoning", f"{where}: nested {OPEN} tags", "a reply has one think block")
    if OPEN in rest or CLOSE in rest:
        raise ReasoningProblem("bad_reasoning", f"{where} has a second think tag after {CLOSE}",
                               "a reply has one think block, at its start")
    return inner.strip(), rest.lstrip()


def as_inline(reasoning: str, content: str) -> str:
    """The inline form nova writes for templates that read reasoning from the content (or that know
    nothing of it): the layout Qwen3 and DeepSeek-R1 produce."""
    return f"{OPEN}\n{reasoning}\n{CLOSE}\n\n{content}"
