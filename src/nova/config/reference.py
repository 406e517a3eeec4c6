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


# The opening of docs/config.md: the smallest config that trains, and the three things a new user asked about.
INTRO = """## A minimal config

`nova init --model MODEL --data FILE` writes one for you, chosen from your data and your GPU. By hand, this is
all a phase needs (everything else has a default, listed below):

```yaml
name: mine                           # the run directory: checkpoints/mine
model:
  base: Qwen/Qwen3-1.7B              # hub id, local directory, or a .gguf file
data:
  datasets:
    - path: data/mine.jsonl          # messages, prompt/completion, alpaca, sharegpt, preference or text
training:
  num_epochs: 2
```

Check it with `nova preflight --config mine.yaml`, train it with `nova train --config mine.yaml`, watch it
with `nova status --watch` from a second pane. One config per model family is in `configs/examples/`.

## Steps and epochs

A **step** is one optimizer update over `micro_batch_size x gradient_accumulation_steps` sequences (the
effective batch, 16 by default). An **epoch** is one pass over the training records: about
`ceil(records / effective batch)` steps. Set `training.num_epochs` (how often each record is seen) or
`training.max_steps` (which wins when set). `nova preflight` prints both ways
(`16 steps x 8 sequences over 45 records = 2.84 epochs`) and warns above 5 epochs (memorizing) or below 0.3.

## The holdout

`data.eval_split` holds that share of the records out of training to measure the eval loss (early stopping,
the rising-loss alert, the forgetting table): 0.1 of 1,000 records is 100, but 0.1 of 23 records is 2, and
an eval loss over 2 records is noise: `nova preflight` warns below 5 held-out records. Raise the share, give
a separate `data.eval_datasets`, or set `eval_split: 0` to train on everything without an eval loss.

## Where a run writes

A phase run alone writes to `checkpoints/<name>` (or its `output_dir`); inside a pipeline, each phase writes
to `<pipeline output_dir>/<phase name>`, whatever its own file says. A file whose field names differ from
nova's maps them with `columns:` on the dataset (`columns: {prompt: question, chosen: response_j}`: nova's
name, then the file's).
"""


def _markdown(phase: list[tuple[str, str, str, str]], pipeline: list[tuple[str, str, str, str]]) -> list[str]:
    lines = ["# nova config reference", "",
             "Generated from the schema by `nova config --markdown`; do not edit by hand.", "",
             *INTRO.splitlines(), ""]
    for title, table in (("Phase config", phase), ("Pipeline config", pipeline)):
        lines += [f"## {title}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for key, type_name, default, desc in table:
            lines.append(f"| `{key}` | {type_name.replace('|', '/')} | {default.replace('|', '/')} | {desc} |")
        lines.append("")
    return lines
