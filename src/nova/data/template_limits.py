"""A chat template is code that comes with the model, run on every record: bounded, and its failures explained.

Bounded: one render may take ``MAX_RENDER_S`` seconds and write or build ``MAX_RENDER_CHARS`` characters
(nested loops that never end, a string doubled until it fills memory); past either it stops with one
clear line. Explained: a template that needs something the record lacks (a tool-use template on a chat
without tools fails with Jinja's "'NoneType' object is not iterable") says what is missing and the fix.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

from nova.data.records import RecordProblem

MAX_RENDER_S = 5.0  # real templates render a record in well under a millisecond
MAX_RENDER_CHARS = 128 * 1024 * 1024  # a record's line is at most 64 MiB (nova.data.sources.MAX_LINE)
_FIX = "set model.chat_template to a template that renders these records, or fix the record"


class TemplateLimit(Exception):
    """A render ran past MAX_RENDER_S or MAX_RENDER_CHARS."""


# The render under way: its deadline, and how many sandbox accesses since the clock was last read. Module
# state, not thread-local: templates render in one thread per process (datasets.map uses processes).
_state = [math.inf, 0]
_CLOCK_EVERY = 255  # a mask: the clock is read once per 256 accesses (a read costs more than the access)


def _over(value: Any) -> Any:
    """What the sandbox handed the template, after checking its size and, now and then, the render's clock."""
    if value.__class__ is str and len(value) > MAX_RENDER_CHARS:
        raise TemplateLimit(f"built a text longer than {MAX_RENDER_CHARS // (1024 * 1024)} Mi characters")
    if time.monotonic() > _state[0]:
        raise TemplateLimit(f"ran longer than {MAX_RENDER_S:g} s on one record")
    return value


def guard(env: Any) -> None:
    """Check sizes and the clock on every attribute, item and call the sandbox makes for the template."""
    getattr_, getitem, call = env.getattr, env.getitem, env.call

    state, mask, clock = _state, _CLOCK_EVERY, time.monotonic

    def checked_getattr(obj: Any, attribute: str, /) -> Any:  # the hot path: _over inlined
        value = getattr_(obj, attribute)
        state[1] += 1
        if (value.__class__ is str and len(value) > MAX_RENDER_CHARS) or (not state[1] & mask and clock() > state[0]):
            return _over(value)
        return value

    def checked_getitem(obj: Any, argument: Any, /) -> Any:
        value = getitem(obj, argument)
        state[1] += 1
        if (value.__class__ is str and len(value) > MAX_RENDER_CHARS) or (not state[1] & mask and clock() > state[0]):
            return _over(value)
        return value

    def checked_call(context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        return _over(call(context, obj, *args, **kwargs))  # calls are rare: the clock every time

    env.getattr, env.getitem, env.call = checked_getattr, checked_getitem, checked_call


def bounded(chunks: Iterator[str]) -> Iterator[str]:
    """The template's output, stopped past MAX_RENDER_CHARS or MAX_RENDER_S (read once per _CHECK_EVERY chunks)."""
    _state[0] = time.monotonic() + MAX_RENDER_S
    size = 0
    try:
        for n, chunk in enumerate(chunks, 1):
            size += len(chunk)
            if size > MAX_RENDER_CHARS:
                raise TemplateLimit(f"wrote more than {MAX_RENDER_CHARS // (1024 * 1024)} Mi characters for one record")
            if not n & _CLOCK_EVERY and time.monotonic() > _state[0]:
                raise TemplateLimit(f"ran longer than {MAX_RENDER_S:g} s on one record")
            yield chunk
    finally:
        _state[0] = math.inf


def explain(exc: BaseException, model_name: str, source: str, messages: list[dict[str, Any]],
            variables: dict[str, Any]) -> RecordProblem:
    """What the template needed that the record lacks, and the fix; Jinja's own message kept at the end."""
    text = f"{type(exc).__name__}: {exc}" if isinstance(exc, TypeError | AttributeError | KeyError) else str(exc)
    head = f"the chat template of {model_name}"
    if isinstance(exc, TemplateLimit):
        return RecordProblem("template_error", f"{head} {exc}: stopped",
                             "check model.chat_template: a template that loops without end or builds text without "
                             "bound cannot train")
    if isinstance(exc, MemoryError):
        return RecordProblem("template_error", f"{head} ran out of memory on this record",
                             "check model.chat_template: it builds text without bound")
    roles = {m.get("role") for m in messages}
    none_like = "NoneType" in text or "undefined" in text.lower()
    if none_like and variables.get("tools") is None and "tools" in source:
        return RecordProblem("template_error", f"{head} needs tools (it reads 'tools') and this chat has none "
                             f"({text})", "add a 'tools' list (function schemas) to the record, or " + _FIX)
    if none_like and "system" not in roles and "system" in source:
        return RecordProblem("template_error", f"{head} needs a system message and this chat has none ({text})",
                             "add one, or set data.system_prompt, or " + _FIX)
    if "system" in text.lower() and "system" in roles:
        return RecordProblem("template_error", f"{head} refuses a system message: {text}",
                             "remove the system message (or data.system_prompt), or " + _FIX)
    for role in sorted(r for r in roles if isinstance(r, str)):
        if f"'{role}'" in text or (role == "tool" and "tool" in text.lower()):
            return RecordProblem("template_error", f"{head} refuses the role '{role}': {text}",
                                 f"drop the '{role}' messages, or " + _FIX)
    return RecordProblem("template_error", f"{head} failed: {text}", _FIX)
