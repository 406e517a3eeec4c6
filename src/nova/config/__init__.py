"""Config: YAML files validated once into a frozen, typed schema.

The names below load on first use, so that ``nova.config.base`` (the sections every schema module
builds on, ``nova.methods`` included) imports without importing the whole schema first.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PhaseConfig", "PipelineConfig", "load_phase", "load_pipeline", "load_yaml_config"]


def __getattr__(name: str) -> Any:
    if name in ("load_phase", "load_pipeline", "load_yaml_config"):
        from nova.config import load

        return getattr(load, name)
    if name in ("PhaseConfig", "PipelineConfig"):
        from nova.config import schema

        return getattr(schema, name)
    raise AttributeError(f"module 'nova.config' has no attribute {name!r}")
