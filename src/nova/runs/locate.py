"""Where a run's base model (and chat template file) is: from what the run recorded, never the current directory.

``nova train`` resolves ``model.base`` against the directory it runs in. A run directory is read
later from anywhere (``nova export --run``, ``merge``, ``infer``), so training records each local
file twice in ``config.yaml`` (``_resolved.locations``): absolute, and relative to the run
directory (which still holds when the tree that holds both is moved or copied elsewhere). Reading
tries those two; a local base found at neither is one clear error at once, never a hub id that
transformers would try to download for half a minute.

Runs written before the record existed are looked up relative to the run directory and each
directory above it (a run under ``checkpoints/`` of the directory training ran in finds
``models/...`` there); only a name shaped like a hub id that is found nowhere is left to the hub.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nova.errors import NovaError
from nova.files import looks_like_local_path

if TYPE_CHECKING:
    from nova.config.schema import ModelConfig

RunRecord = Any  # nova.runs.record.RunRecord (not imported: record.py imports this module)

LOCATIONS_KEY = "locations"  # inside _resolved: {"base": {"path": ABS, "from_run": REL}, "chat_template": ...}
_FILES = ("base", "chat_template")


def record_locations(run_path: Path, model: dict[str, Any], resolved: dict[str, Any],
                     data_paths: list[str] | None = None) -> dict[str, Any]:
    """The locations of the run's local files, for ``_resolved.locations`` (written with config.yaml).

    The base is the one training loaded (``_resolved.base``: a .gguf base's imported directory); a
    hub id is not a local file and is left out. ``data_paths``: the stages' data sources as configured
    (an export checks the model on the records training held out).
    """
    out: dict[str, Any] = {}
    values = {"base": resolved.get("base") or model.get("base"), "chat_template": model.get("chat_template")}
    for key in _FILES:
        entry = _entry(run_path, values[key])
        if entry is not None:
            out[key] = entry
    data = {path: entry for path in data_paths or [] if (entry := _entry(run_path, path)) is not None}
    if data:
        out["data"] = data
    return out


def _entry(run_path: Path, value: Any) -> dict[str, str] | None:
    """{"path": absolute, "from_run": relative to the run} of an existing local file, else None."""
    if not isinstance(value, str) or not value:
        return None
    path = Path(value).expanduser()
    if not path.exists():
        return None
    absolute = path.resolve()
    entry = {"path": str(absolute)}
    with contextlib.suppress(ValueError):  # another drive on Windows: no relative path exists
        entry["from_run"] = os.path.relpath(absolute, Path(run_path).resolve())
    return entry


def _recorded(record: RunRecord, key: str) -> Path | None:
    """The file ``key`` as recorded: absolute, else relative to the run; NovaError when it is at neither."""
    entry = (record.resolved.get(LOCATIONS_KEY) or {}).get(key)
    if not isinstance(entry, dict):
        return None
    tried = []
    for value, base in ((entry.get("path"), None), (entry.get("from_run"), record.run.path.resolve())):
        if not isinstance(value, str):
            continue
        candidate = Path(value) if base is None else base / value
        if candidate.exists():
            return candidate
        tried.append(str(candidate if base is None else candidate.resolve()))
    what = "base model" if key == "base" else "chat template"
    raise NovaError(f"the run's {what} is not where training found it: {' or '.join(tried)}",
                    hint=f"restore it there, or copy it beside the run at the same relative path ({record.run.path})")


def _legacy(record: RunRecord, value: str, what: str = "base model") -> str:
    """A run without recorded locations: ``value`` under the run directory or a directory above it."""
    path = Path(value).expanduser()
    if path.is_absolute():
        if path.exists():
            return str(path)
        raise NovaError(f"the run's {what} {path} does not exist", hint="restore it there")
    for parent in [record.run.path.resolve(), *record.run.path.resolve().parents]:
        if (parent / path).exists():
            return str(parent / path)
    if looks_like_local_path(value):
        raise NovaError(f"the run's {what} '{value}' is not found relative to the run {record.run.path} "
                        "or any directory above it", hint="run the command from the directory training ran in, "
                        "or restore the model")
    return value  # a hub id


def located_model(record: RunRecord) -> ModelConfig:
    """The run's model settings with its base and chat template where this machine has them now."""
    changes: dict[str, Any] = {}
    configured = Path(record.model.base).expanduser()
    # An absolute model.base that exists is the config's own word (also where a user pointed config.yaml).
    base = configured if configured.is_absolute() and configured.is_dir() else _recorded(record, "base")
    if base is not None:
        changes.update(base=str(base), revision=None)
    elif not record.model.base.lower().endswith(".gguf"):
        changes["base"] = _legacy(record, str(record.resolved.get("base") or record.model.base))
    else:
        imported = record.resolved.get("base")
        if isinstance(imported, str):
            changes["base"] = _legacy(record, imported)
    template = _recorded(record, "chat_template")
    if template is not None:
        changes["chat_template"] = str(template)
    elif record.model.chat_template:
        changes["chat_template"] = _legacy(record, record.model.chat_template, "chat template")
    if changes.get("base") == record.model.base:
        changes.pop("base")
    return record.model.changed(**changes) if changes else record.model


def data_paths(data: dict[str, Any]) -> list[str]:
    """Every data source path of a run's config mapping (its stages' datasets and eval_datasets)."""
    sections = [stage.get("data") or {} for stage in data.get("stages") or []] or [data.get("data") or {}]
    return [spec["path"] for section in sections for key in ("datasets", "eval_datasets")
            for spec in section.get(key) or [] if isinstance(spec, dict) and isinstance(spec.get("path"), str)]


def located_data(record: RunRecord, data_cfg: Any) -> Any:
    """A stage's data section with each source where the run recorded it (as configured when not recorded
    or gone: reading it then fails, and the caller does without the holdout)."""
    recorded = (record.resolved.get(LOCATIONS_KEY) or {}).get("data") or {}

    def place(spec: Any) -> Any:
        entry = recorded.get(spec.path) or {}
        tries = [(entry.get("path"), None), (entry.get("from_run"), record.run.path)]
        if not entry and not Path(spec.path).expanduser().is_absolute():  # an older run: beside or above it
            tries += [(spec.path, parent) for parent in [record.run.path.resolve(), *record.run.path.resolve().parents]]
        for value, base in tries:
            if isinstance(value, str) and (found := Path(value) if base is None else Path(base) / value).exists():
                return spec.changed(path=str(found))
        return spec

    return data_cfg.changed(datasets=[place(s).model_dump(exclude_unset=True) for s in data_cfg.datasets],
                            eval_datasets=[place(s).model_dump(exclude_unset=True) for s in data_cfg.eval_datasets])
