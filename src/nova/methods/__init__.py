"""Training methods: one spec per method (``nova.methods.spec.MethodSpec``), the one place that tells them apart.

Each method is one module here, named after it, holding its ``SPEC`` and, if it has settings, its
section (``dpo.py``: ``DPOConfig``). ``METHOD_NAMES`` is the registry: adding a method is its module,
its name below, its trainer in ``nova.train.methods`` (the spec's ``trainer``) and its page in
docs/methods.md. The config schema, data, preflight, training, monitor, model cards and the CLI
read everything else from the spec; ``tests/test_architecture.py`` keeps method-name comparisons
out of the rest of the code.

The modules load on first use, so ``nova --help`` lists the names without importing pydantic.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import Literal

from nova.errors import NovaError
from nova.methods.spec import LearningRates, MethodSpec, Records

# In the order ``nova config`` and the docs list them; the first method reading a row shape is the
# default for files of that shape (``nova data check FILE``).
METHOD_NAMES: tuple[str, ...] = ("sft", "dpo", "kto", "orpo", "simpo", "grpo")
Method = Literal[METHOD_NAMES]  # type: ignore[valid-type]  # the schema's choices, from the registry


@cache
def method_spec(name: str) -> MethodSpec:
    """The spec of a method by its name (a config validated it; anything else is a user's typo or a bug)."""
    if name not in METHOD_NAMES:
        raise NovaError(f"unknown training method '{name}'", hint=f"methods: {', '.join(METHOD_NAMES)}")
    spec: MethodSpec = importlib.import_module(f"nova.methods.{name}").SPEC
    return spec


def all_specs() -> list[MethodSpec]:
    """Every method's spec, in registry order."""
    return [method_spec(name) for name in METHOD_NAMES]


def with_section() -> list[MethodSpec]:
    """The methods that have a settings section (a stage key of the method's name)."""
    return [s for s in all_specs() if s.section is not None]


def reading(records: str) -> list[str]:
    """The methods that train on rows of this shape, in registry order."""
    return [s.name for s in all_specs() if s.records == records]


__all__ = ["METHOD_NAMES", "LearningRates", "Method", "MethodSpec", "Records", "all_specs", "method_spec",
           "reading", "with_section"]
