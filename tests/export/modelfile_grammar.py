"""The Modelfile grammar ``ollama create`` accepts, ported from ollama's parser/parser.go (ParseFile).

A state machine over runes, as in Go:

- a line is ``# comment``, blank, or ``COMMAND value``; commands (any case): FROM, ADAPTER,
  TEMPLATE, SYSTEM, LICENSE, PARAMETER, MESSAGE, DRAFT, RENDERER, PARSER, REQUIRES;
- ``PARAMETER name value`` (name: letters, digits, ``_``); ``MESSAGE role value`` (role: system,
  user or assistant);
- a value runs to the end of the line, spaces included; a value in quotes or in triple quotes
  may span lines and is taken as is between the quotes: no escapes (a backslash stays a
  backslash); it is closed at the first line end where it unquotes (so triple quotes inside end it);
- runes that are not printable (Go's strconv.IsPrint) outside that line-end handling are dropped;
- a Modelfile without FROM is refused.

``check_parameters`` then applies what api.FormatParams checks for the parameters nova writes:
the name is a known option and the value parses as its type (``stop`` is a list).
"""

from __future__ import annotations

import unicodedata

COMMANDS = {"from", "license", "template", "system", "adapter", "draft", "renderer", "parser", "parameter",
            "message", "requires"}
ROLES = {"system", "user", "assistant"}
# api.Options / api.Runner fields (the json names) with their kinds, as FormatParams converts them.
PARAMETERS = {"num_keep": int, "seed": int, "num_predict": int, "top_k": int, "top_p": float, "min_p": float,
              "typical_p": float, "repeat_last_n": int, "temperature": float, "repeat_penalty": float,
              "presence_penalty": float, "frequency_penalty": float, "stop": list, "num_ctx": int, "num_batch": int,
              "num_gpu": int, "main_gpu": int, "use_mmap": bool, "num_thread": int}


class ModelfileError(ValueError):
    """What ``ollama create`` would refuse, with the line number as ollama reports it."""


def _printable(ch: str) -> bool:
    if ch == " ":
        return True
    return unicodedata.category(ch)[0] in "LMNPS"


def _unquote(s: str) -> tuple[str, bool]:
    if s.startswith('"""'):
        return (s[3:-3], True) if len(s) >= 6 and s.endswith('"""') else ("", False)
    if s.startswith('"'):
        return (s[1:-1], True) if len(s) >= 2 and s.endswith('"') else ("", False)
    return s, True


def _next_state(ch: str, state: str) -> tuple[str, str | None]:
    """parseRuneForState: (next state, the rune to keep or None); raises on what Go rejects."""
    space, newline = ch in " \t", ch in "\r\n"
    if state == "nil":
        return ("comment", None) if ch == "#" else ("nil", None) if space or newline else ("name", ch)
    if state == "name":
        if ch.isascii() and ch.isalpha():
            return "name", ch
        if space:
            return "value", None
        raise ModelfileError("command must be one of " + ", ".join(sorted(COMMANDS)))
    if state == "value":
        return ("nil", ch) if space or newline else ("value", ch)
    if state in ("parameter", "message"):
        allowed = ch.isascii() and (ch.isalpha() or (state == "parameter" and (ch.isdigit() or ch == "_")))
        if allowed:
            return state, ch
        if space:
            return "value", None
        raise ModelfileError("unexpected EOF")
    return ("nil", None) if newline else ("comment", None)


def parse(text: str) -> list[tuple[str, str]]:
    """(command, argument) pairs as ollama's ParseFile returns them; PARAMETER gives (name, value)."""
    commands: list[tuple[str, str]] = []
    state, buf, name, role, line = "nil", "", "", "", 1
    for ch in text.lstrip("\ufeff"):
        line += ch in "\r\n"
        nxt, keep = _next_state(ch, state)
        if nxt != state:
            if state == "name":
                if buf.lower() not in COMMANDS:
                    raise ModelfileError(f"(line {line}): unknown command '{buf}'")
                lowered = buf.lower()
                name = "model" if lowered == "from" else lowered
                nxt = {"parameter": "parameter", "message": "message"}.get(lowered, nxt)
            elif state == "parameter":
                name = buf
            elif state == "message":
                if buf not in ROLES:
                    raise ModelfileError(f"(line {line}): message role must be system, user or assistant")
                role = buf
            elif state == "value":
                value, ok = _unquote(buf.strip())
                if not ok or ch in " \t":
                    buf += ch
                    continue
                commands.append((name, f"{role}: {value}" if role else value))
                role = ""
            buf, state = "", nxt
        if keep is not None and _printable(keep):
            buf += keep
    if state == "value":
        value, ok = _unquote(buf.strip())
        if not ok:
            raise ModelfileError("unexpected EOF (an unclosed quote)")
        commands.append((name, f"{role}: {value}" if role else value))
    elif state not in ("nil", "comment"):
        raise ModelfileError("unexpected EOF")
    if not any(c == "model" for c, _ in commands):
        raise ModelfileError("no FROM line")
    return commands


def check_parameters(commands: list[tuple[str, str]]) -> dict[str, object]:
    """The parameters as api.FormatParams converts them; ModelfileError for an unknown name or bad value."""
    out: dict[str, object] = {}
    for name, value in commands:
        if name in {"model", "adapter", "template", "system", "license", "message", "draft", "renderer", "parser",
                    "requires"}:
            continue
        kind = PARAMETERS.get(name)
        if kind is None:
            raise ModelfileError(f"unknown parameter '{name}'")
        try:
            if kind is list:
                out.setdefault(name, [])
                out[name].append(value)  # type: ignore[union-attr]
            elif kind is bool:
                out[name] = {"true": True, "false": False}[value.lower()]
            else:
                out[name] = kind(value)
        except (ValueError, KeyError):
            raise ModelfileError(f"invalid {kind.__name__} value for {name}: {value!r}") from None
    return out
