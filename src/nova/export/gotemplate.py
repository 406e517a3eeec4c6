"""A small interpreter for the subset of Go's text/template that nova's Ollama templates use.

Ollama renders prompts with Go templates, not Jinja. nova derives a Go TEMPLATE from the model's
Jinja chat template and must know the two produce the same prompt; there is no Go toolchain here,
so this module evaluates the template text itself (the exact string that goes into the Modelfile)
on sample conversations. It supports what the generator emits and what Ollama's own ChatML
templates use:

- text, ``{{ .Field }}``, ``{{ $var }}``, ``{{ "string literal" }}``, ``{{- ... -}}`` trimming;
- ``{{ range $i, $_ := .Messages }} ... {{ end }}`` (dot becomes the message);
- ``{{ if COND }} ... {{ else if COND }} ... {{ else }} ... {{ end }}``;
- conditions built from ``eq``, ``ne``, ``and``, ``or``, ``not``, ``len``, ``slice``, parentheses,
  ``$var``, ``.Field``, ``$.Field``, integers and string literals.

Anything else raises ``GoTemplateError``, so an unsupported construct is never silently skipped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any


class GoTemplateError(ValueError):
    """The template uses something this interpreter does not support, or is malformed."""


_EXPR_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\(|\)|[^\s()]+')


@dataclass
class _Node:
    kind: str  # "text", "out", "if", "range"
    value: Any = None
    branches: list[tuple[Any, list[_Node]]] = field(default_factory=list)  # if: (cond or None, body)
    body: list[_Node] = field(default_factory=list)  # range body
    names: tuple[str, ...] = ()  # range variables


def _find_action_end(text: str, pos: int) -> int:
    """Index of the ``}}`` closing the action that starts at ``pos``, skipping quoted strings."""
    i = pos
    while i < len(text):
        ch = text[i]
        if ch == '"':
            i += 1
            while i < len(text) and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif text.startswith("}}", i):
            return i
        i += 1
    raise GoTemplateError("unterminated action '{{'")


def _lex(text: str) -> list[tuple[str, str]]:
    """Split into ("text", s) and ("action", s), applying ``{{-`` / ``-}}`` whitespace trimming."""
    parts: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    while True:
        start = text.find("{{", pos)
        chunk = text[pos:] if start < 0 else text[pos:start]
        if trim_next:
            chunk = chunk.lstrip()
        if start < 0:
            if chunk:
                parts.append(("text", chunk))
            return parts
        end = _find_action_end(text, start + 2)
        inner = text[start + 2:end]
        trim_left = re.match(r"-[ \t\r\n]", inner) is not None
        trim_right = re.search(r"[ \t\r\n]-$", inner) is not None
        if trim_left:
            chunk = chunk.rstrip()
            inner = inner[1:]
        if trim_right:
            inner = inner[:-1]
        if chunk:
            parts.append(("text", chunk))
        parts.append(("action", inner.strip()))
        trim_next = trim_right
        pos = end + 2


def _parse_expr(src: str) -> Any:
    """An expression as nested lists: ``eq .Role "user"`` -> ["eq", ".Role", '"user"']."""
    tokens = _EXPR_TOKEN.findall(src)
    pos = 0

    def seq(closing: bool) -> list[Any]:
        nonlocal pos
        items: list[Any] = []
        while pos < len(tokens):
            tok = tokens[pos]
            pos += 1
            if tok == "(":
                items.append(seq(True))
            elif tok == ")":
                if not closing:
                    raise GoTemplateError(f"unbalanced ')' in {src!r}")
                return items
            else:
                items.append(tok)
        if closing:
            raise GoTemplateError(f"unbalanced '(' in {src!r}")
        return items

    items = seq(False)
    if not items:
        raise GoTemplateError("empty action")
    return items[0] if len(items) == 1 else items


def parse(text: str) -> list[_Node]:
    """Parse template text into a node list (GoTemplateError on unsupported syntax)."""
    parts = _lex(text)
    pos = 0

    def block(stop: tuple[str, ...]) -> tuple[list[_Node], str | None]:
        nonlocal pos
        nodes: list[_Node] = []
        while pos < len(parts):
            kind, value = parts[pos]
            pos += 1
            if kind == "text":
                nodes.append(_Node("text", value))
                continue
            word = value.split(None, 1)[0] if value else ""
            if word in ("end", "else") and word in stop:
                return nodes, value
            if word == "if":
                nodes.append(if_node(value[2:].strip()))
            elif word == "range":
                nodes.append(range_node(value[5:].strip()))
            elif word in ("end", "else", "define", "template", "block", "with", "break", "continue"):
                raise GoTemplateError(f"unsupported or misplaced action '{{{{ {value} }}}}'")
            elif value.startswith("/*"):
                continue
            else:
                nodes.append(_Node("out", _parse_expr(value)))
        if stop:
            raise GoTemplateError("missing {{ end }}")
        return nodes, None

    def if_node(cond: str) -> _Node:
        node = _Node("if")
        current = _parse_expr(cond)
        while True:
            body, closer = block(("end", "else"))
            node.branches.append((current, body))
            if closer == "end":
                return node
            rest = (closer or "")[4:].strip()
            if rest.startswith("if "):
                current = _parse_expr(rest[3:])
            elif not rest:
                current = None
            else:
                raise GoTemplateError(f"unsupported '{{{{ {closer} }}}}'")

    def range_node(spec: str) -> _Node:
        match = re.fullmatch(r"(?:(\$\w*)\s*(?:,\s*(\$\w*))?\s*:=\s*)?(.+)", spec)
        if not match:
            raise GoTemplateError(f"unsupported range '{spec}'")
        names = tuple(n for n in match.group(1, 2) if n)
        node = _Node("range", value=_parse_expr(match.group(3)), names=names)
        node.body, closer = block(("end", "else"))
        if closer != "end":
            raise GoTemplateError("range with else is not supported")
        return node

    nodes, _ = block(())
    return nodes


def _truthy(value: Any) -> bool:
    return bool(value)


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, dict):
        if name not in obj:
            return None
        return obj[name]
    return getattr(obj, name, None)


def _eval(expr: Any, dot: Any, root: Any, variables: dict[str, Any]) -> Any:
    if isinstance(expr, list):
        head, *args = expr
        if isinstance(head, list):
            if args:
                raise GoTemplateError(f"cannot call {head!r}")
            return _eval(head, dot, root, variables)
        values = [_eval(a, dot, root, variables) for a in args]
        if head == "eq":
            return any(values[0] == v for v in values[1:])
        if head == "ne":
            return values[0] != values[1]
        if head == "and":
            out = values[0]
            for v in values:
                out = v
                if not _truthy(v):
                    return v
            return out
        if head == "or":
            for v in values:
                if _truthy(v):
                    return v
            return values[-1]
        if head == "not":
            return not _truthy(values[0])
        if head == "len":
            return len(values[0])
        if head == "slice":
            if not 2 <= len(values) <= 3:
                raise GoTemplateError("slice takes a list and one or two indexes")
            return values[0][values[1]:] if len(values) == 2 else values[0][values[1]:values[2]]
        raise GoTemplateError(f"unsupported function '{head}'")
    token = str(expr)
    if token.startswith('"'):
        return json.loads(token)
    if re.fullmatch(r"-?\d+", token):
        return int(token)
    if token == ".":
        return dot
    if token.startswith("$."):
        return _path(root, token[2:])
    if token.startswith("$"):
        name, _, rest = token.partition(".")
        if name not in variables:
            raise GoTemplateError(f"undefined variable {name}")
        return _path(variables[name], rest) if rest else variables[name]
    if token.startswith("."):
        return _path(dot, token[1:])
    raise GoTemplateError(f"unsupported expression '{token}'")


def _path(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = _field(obj, part)
    return obj


def _run(nodes: list[_Node], dot: Any, root: Any, variables: dict[str, Any], out: list[str]) -> None:
    for node in nodes:
        if node.kind == "text":
            out.append(node.value)
        elif node.kind == "out":
            value = _eval(node.value, dot, root, variables)
            out.append("" if value is None else str(value))
        elif node.kind == "if":
            for cond, body in node.branches:
                if cond is None or _truthy(_eval(cond, dot, root, variables)):
                    _run(body, dot, root, variables, out)
                    break
        elif node.kind == "range":
            items = _eval(node.value, dot, root, variables) or []
            for index, item in enumerate(items):
                scope = dict(variables)
                if len(node.names) == 1:
                    scope[node.names[0]] = item
                elif len(node.names) == 2:
                    scope[node.names[0]] = index
                    scope[node.names[1]] = item
                _run(node.body, item, root, scope, out)


def render(text: str, values: dict[str, Any]) -> str:
    """Render template ``text`` with ``values`` (e.g. ``{"Messages": [{"Role": ..., "Content": ...}]}``)."""
    out: list[str] = []
    _run(parse(text), values, values, {"$": values}, out)
    return "".join(out)


def quote_literal(text: str) -> str:
    """``text`` as template source: plain text, or a quoted action when it contains ``{{``."""
    if "{{" not in text and "}}" not in text:
        return text
    return "{{ " + json.dumps(text) + " }}"
