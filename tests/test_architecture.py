"""The package's shape: no import cycles between nova's modules, and the layers point one way.

Imports inside functions count: a lazy import is still a dependency, and lazy imports are how
cycles hide. Importing ``pkg.sub`` (or ``from pkg import sub``) counts as a dependency on
``pkg.sub`` only; a package's ``__init__`` importing its own submodules is not a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Lower numbers sit below: a module may import modules of its own layer or below, never above.
LAYERS = [
    ("nova", "nova.errors", "nova.console", "nova.files", "nova.lazy", "nova.system", "nova.setup"),
    # the method registry and the data formats table are read by the config schema (nova.data.formats is the
    # data layer's vocabulary, imported without the data pipeline)
    ("nova.config", "nova.methods", "nova.data.formats"),
    ("nova.runs", "nova.plan"),
    ("nova.data", "nova.model"),
    ("nova.monitor", "nova.preflight"),
    ("nova.train", "nova.merge", "nova.infer", "nova.export", "nova.eval", "nova.ui", "nova.init"),
    ("nova.cli", "nova.__main__"),
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.joinpath("nova").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _targets(node: ast.AST, package: str, modules: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in modules]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        parent = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*parent, base] if base else parent)
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in modules:
            out.append(sub)
        elif base in modules:
            out.append(base)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            graph[name].update(t for t in _targets(node, package, modules) if t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def layer_of(module: str) -> int:
    best, level = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), i
    assert level >= 0, f"{module} is in no layer: add it to LAYERS"
    return level


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_layers_point_one_way() -> None:
    wrong = [f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
             for m, targets in import_graph().items() for t in sorted(targets) if layer_of(t) > layer_of(m)]
    assert wrong == []


def test_no_module_over_450_lines() -> None:
    long = {str(p.relative_to(SRC)): n for p in SRC.joinpath("nova").rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 450}
    assert long == {}


# Where method names may be compared: the method registry itself and the config schema that reads it.
METHOD_NAME_OWNERS = ("nova/methods/", "nova/config/schema.py")


def _is_method_name(node: ast.AST, names: frozenset[str]) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and node.value in names
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return any(_is_method_name(e, names) for e in node.elts)
    return False


def method_name_comparisons(root: Path = SRC) -> list[str]:
    """``x == "dpo"``, ``m in ("kto", "orpo")``, and tables keyed by method names (``{"sft": ...}``)
    outside the registry and the schema: each is a fact about a method that its spec should hold."""
    from nova.methods import METHOD_NAMES

    names = frozenset(METHOD_NAMES)
    found = []
    for path in sorted(root.joinpath("nova").rglob("*.py")):
        where = path.relative_to(root).as_posix()
        if where.startswith(METHOD_NAME_OWNERS):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        compared = {id(n) for c in ast.walk(tree) if isinstance(c, ast.Compare) for n in c.comparators}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Tuple | ast.List | ast.Set) and id(node) not in compared and len(node.elts) > 1
                    and all(_is_method_name(e, names) for e in node.elts)):
                found.append(f"{where}:{node.lineno}: a list of method names")
            elif isinstance(node, ast.Compare) and any(_is_method_name(n, names)
                                                       for n in (node.left, *node.comparators)):
                found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
            elif isinstance(node, ast.Dict) and any(k is not None and _is_method_name(k, names) for k in node.keys):
                found.append(f"{where}:{node.lineno}: a table keyed by method names")
    return found


def test_the_finder_sees_method_name_comparisons(tmp_path: Path) -> None:
    pkg = tmp_path / "nova" / "data"
    pkg.mkdir(parents=True)
    (pkg / "x.py").write_text('def f(m, kind):\n    a = m == "dpo"\n    b = m in ("kto", "orpo")\n'
                              '    c = kind == "pairs"\n    d = ("dpo", "simpo")\n    return {"sft": 1}\n')
    assert [f.split(": ", 1)[1] for f in method_name_comparisons(tmp_path)] == [
        "m == 'dpo'", "m in ('kto', 'orpo')", "a list of method names", "a table keyed by method names"]


def test_methods_are_told_apart_by_their_specs_only() -> None:
    """Code outside nova.methods and the config schema asks a method's spec (nova.methods), never its name:
    a new method is one spec plus its trainer (docs/architecture.md)."""
    assert method_name_comparisons() == []


def test_no_private_names_are_imported_across_modules() -> None:
    """A name another module needs is public (no leading underscore) where it is defined."""
    found = []
    for path in sorted(SRC.joinpath("nova").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nova"):
                found += [f"{path.relative_to(SRC)}:{node.lineno}: {a.name} from {node.module}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert found == []
