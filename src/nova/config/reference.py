"""The config reference, generated from the schema's field descriptions (documented once, there)."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from nova.config.schema import PhaseConfig, PipelineConfig, StageConfig
from nova.errors import NovaError


def _bounds(metadata: list[Any]) -> str:
    """The numeric limits of a field (``>0, <=10000000``), so the reference says what is accepted."""
    signs = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    parts = [f"{sign}{getattr(m, name)}" for m in metadata for name, sign in signs.items() if hasattr(m, name)]
    return f" ({', '.join(parts)})" if parts else ""


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *metadata = typing.get_args(annotation)
        return _type_name(base) + _bounds([x for m in metadata for x in getattr(m, "metadata", [m])])
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is list:
        return f"list[{', '.join(_type_name(a) for a in typing.get_args(annotation))}]"
    if origin is dict:
        return "mapping"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _section_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _section_of(arg)
        if found is not None:
            return found
    return None


def _default(field: Any) -> str:
    if field.default is not PydanticUndefined:
        return repr(field.default) if field.default is not None else "unset"
    if field.default_factory is not None:
        value = field.default_factory()
        return "[]" if value == [] else ("{}" if value == {} else "(section defaults)")
    return "required"


def rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) for every key, sections expanded depth-first."""
    out = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        section = _section_of(field.annotation)
        type_name = _type_name(field.annotation) + _bounds(field.metadata) if section is None else (
            f"list of {section.__name__}" if typing.get_origin(field.annotation) is list else "section")
        out.append((key, type_name, _default(field), field.description or ""))
        if section is not None and section not in (PhaseConfig,):
            sub = f"{key}[]." if typing.get_origin(field.annotation) is list else f"{key}."
            out.extend(rows(section, sub))
    return out


STAGE = "stages[]."  # a stage's keys; a single-stage phase may write them at the phase level (stages[0])


def _in_section(key: str, section: str) -> bool:
    return key == section or key.startswith(section + ".") or key.startswith(section + "[]")


def reference_lines(section: str | None = None, *, markdown: bool = False) -> list[str]:
    phase = rows(PhaseConfig)
    pipeline = [r for r in rows(PipelineConfig) if not r[0].startswith("phases[].")]
    if section:
        phase = [r for r in phase if _in_section(r[0], section) or _in_section(r[0], f"{STAGE}{section}")]
        pipeline = [r for r in pipeline if r[0].startswith(section)]
        if not phase and not pipeline:
            top = [k for k in PhaseConfig.model_fields if k != "stages"]
            raise NovaError(f"no config section '{section}'", hint=f"sections: {', '.join(top)}, stages (and a "
                            f"stage's {', '.join(StageConfig.model_fields)})")
    if markdown:
        return _markdown(phase, pipeline)
    lines = []
    for title, table in (("Phase config", phase), ("Pipeline config", pipeline)):
        if table:
            lines.append(f"{title}:")
            for key, type_name, default, desc in table:
                lines.append(f"  {key}  ({type_name}; default {default})")
                if desc:
                    lines.append(f"      {desc}")
    return lines


def _markdown(phase: list[tuple[str, str, str, str]], pipeline: list[tuple[str, str, str, str]]) -> list[str]:
    lines = ["# nova config reference", "",
             "Generated from the schema by `nova config --markdown`; do not edit by hand.", ""]
    for title, table in (("Phase config", phase), ("Pipeline config", pipeline)):
        lines += [f"## {title}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for key, type_name, default, desc in table:
            lines.append(f"| `{key}` | {type_name.replace('|', '/')} | {default.replace('|', '/')} | {desc} |")
        lines.append("")
    return lines
