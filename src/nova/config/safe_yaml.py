"""Parse YAML with bounds: a config is small, so anything huge, deep or self-referencing is refused.

PyYAML composes aliases as shared nodes, so a 300-byte "billion laughs" file (anchors that alias
anchors nine times over) is a small graph that expands to a billion values in anything that walks
it as a tree: the line index, pydantic, a repr in an error message. The size of that expansion is
counted here, once per node (memoized by node id, no recursion), before anything walks it. The
same walk refuses nesting deeper than any config needs (pydantic and the YAML constructor recurse)
and integers longer than Python converts (``int('9' * 5000)`` raises ValueError since 3.11).
"""

from __future__ import annotations

from typing import Any

import yaml

from nova.errors import ConfigError, Problem

KeyPath = tuple[str | int, ...]

MAX_VALUES = 100_000  # expanded values (scalars and collections); nova's largest shipped config has < 200
MAX_DEPTH = 64  # nesting levels; a config needs about 6
MAX_INT_DIGITS = 100  # no setting needs more than 20
MAX_BYTES = 1024 * 1024  # a config file; ~1 s of parsing
_INT_TAG = "tag:yaml.org,2002:int"


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _refuse(where: str, node: yaml.Node | None, what: str, hint: str) -> ConfigError:
    """``where`` is a file (the node's line is added) or a ``--set`` item (node None: no line to add)."""
    place = f"{where}:{node.start_mark.line + 1}" if node is not None else where
    return ConfigError("config refused", [Problem(place, what, hint)])


def check_node(root: yaml.Node, where: str, *, numbered: bool = True) -> None:
    """Raise ConfigError when the document under ``root`` expands too far, nests too deeply, refers to
    itself, or holds an integer too long to read. Linear in the number of distinct nodes.

    Iterative post-order walk: a node is "open" from its first visit until its children are done;
    meeting an open node again means an alias points at its own ancestor (a cycle).
    """
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        problem = None
        if finished:
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            open_nodes.discard(key)
            if size[key] > MAX_VALUES:
                problem = (f"expands to more than {MAX_VALUES} values (nested YAML aliases?)",
                           "write the values out instead of aliasing aliases")
            elif depth[key] > MAX_DEPTH:
                problem = (f"nested too deeply (more than {MAX_DEPTH} levels)",
                           "a config needs only a few levels of nesting")
        elif key in open_nodes:
            problem = ("an alias refers to a collection that contains it (a cycle)", "remove the recursive alias")
        elif isinstance(node, yaml.ScalarNode) and node.tag == _INT_TAG and len(node.value) > MAX_INT_DIGITS:
            problem = (f"an integer of {len(node.value)} characters",
                       f"no setting takes more than {MAX_INT_DIGITS} digits")
        elif key not in size:
            open_nodes.add(key)
            stack.append((node, True))
            stack.extend((k, False) for k in _children(node) if id(k) not in size)
        if problem is not None:
            raise _refuse(where, node if numbered else None, *problem)


def line_index(root: yaml.Node | None) -> dict[KeyPath, int]:
    """Map each key path of a composed document to its 1-based line.

    Each node is entered once: the keys under a second alias of an anchor get no line of their own
    (a problem there names the line of the alias), so a graph of shared nodes costs its node count.
    """
    lines: dict[KeyPath, int] = {}
    seen: set[int] = set()
    stack: list[tuple[yaml.Node | None, KeyPath]] = [(root, ())]
    while stack:
        node, prefix = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            children: list[tuple[yaml.Node, KeyPath]] = []
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):  # a complex key (? [a, b]) is no config key
                    continue
                path = (*prefix, key_node.value)
                lines[path] = key_node.start_mark.line + 1  # a repeated key: the last one wins, as in the value
                children.append((value_node, path))
        elif isinstance(node, yaml.SequenceNode):
            children = [(item, (*prefix, i)) for i, item in enumerate(node.value)]
            for item, path in children:
                lines[path] = item.start_mark.line + 1
        else:
            continue
        stack.extend(reversed(children))  # document order: an anchor is indexed where it is written
    return lines


def load(text: str, where: str, *, numbered: bool = True) -> tuple[Any, dict[KeyPath, int]]:
    """The value of a YAML document (None when empty) and the line of each key path.

    Raises ConfigError for a document refused by ``check_node`` or one nested beyond what the
    parser's recursion allows; malformed YAML raises ``yaml.YAMLError`` as ``yaml.safe_load`` does.
    Composed once and constructed from the same node, as ``yaml.safe_load`` does inside; the lines
    are indexed first, because constructing flattens merge keys (``<<: *defaults``) in place.
    """
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise _refuse(where, None, f"nested too deeply (more than {MAX_DEPTH} levels)",
                          "a config needs only a few levels of nesting") from None
        if node is None:
            return None, {}
        check_node(node, where, numbered=numbered)
        lines = line_index(node)
        try:
            return loader.construct_document(node), lines
        except (ValueError, TypeError, OverflowError) as exc:  # e.g. !!timestamp 2020-13-45
            raise ConfigError("malformed YAML", [Problem(where, f"a value cannot be read: {exc}")]) from None
    finally:
        loader.dispose()
