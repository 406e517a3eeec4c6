"""Read YAML configs, apply ``--set`` overrides, validate, and report every problem at once.

Each problem names the file, the line where YAML has one, the key path, and a fix; an
unknown key gets a did-you-mean suggestion (a silently ignored typo is how a learning rate
ends up 40x too low without anyone noticing).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from nova.config import safe_yaml
from nova.config.safe_yaml import MAX_BYTES, KeyPath
from nova.config.schema import PhaseConfig, PipelineConfig
from nova.errors import ConfigError, Problem


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config with where it came from."""

    path: Path
    config: PhaseConfig | PipelineConfig
    raw: dict[str, Any]

    @property
    def is_pipeline(self) -> bool:
        return isinstance(self.config, PipelineConfig)


def read_yaml(path: Path) -> tuple[dict[str, Any], dict[KeyPath, int]]:
    """A YAML mapping and the line of each key path; every way it can be unreadable is a ConfigError."""
    if not path.exists():
        raise ConfigError("config not found", [Problem(str(path), "no such file", "check the --config path")])
    if path.is_dir():
        raise ConfigError("config is a directory", [Problem(str(path), "expected a YAML file", "pass a .yaml file")])
    if not path.is_file():
        raise ConfigError("config is not a file", [Problem(str(path), "not a regular file", "pass a .yaml file")])
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_BYTES + 1)  # never more: the path may be a file that keeps growing
        if len(raw) > MAX_BYTES:
            raise ConfigError("config too large", [Problem(str(path), f"more than {MAX_BYTES} bytes",
                                                           "a config is a short YAML file")])
        text = raw.decode("utf-8")
    except (UnicodeDecodeError, OSError) as exc:
        raise ConfigError("cannot read config", [Problem(str(path), str(exc))]) from None
    try:
        data, lines = safe_yaml.load(text, str(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        fix = WINDOWS_PATH_HINT if "escape" in what else "fix the YAML syntax"
        raise ConfigError("malformed YAML", [Problem(where, what, fix)]) from None
    if data is None:
        raise ConfigError("empty config", [Problem(str(path), "the file holds no settings")])
    if not isinstance(data, dict):
        raise ConfigError("bad config", [Problem(str(path), f"expected a mapping of keys, got {type(data).__name__}")])
    refuse_escaped_paths(data, path, lines)
    return data, lines


# Keys whose values are file system paths (config/schema.py, config/data_schema.py, methods/grpo.py), and a
# pipeline's phases.
PATH_KEYS = frozenset({"path", "base", "chat_template", "models_dir", "cache_dir", "file", "output_dir", "logs_dir",
                       "phases"})
WINDOWS_PATH_HINT = ("inside double quotes YAML reads a backslash as an escape: write a Windows path in single "
                     "quotes ('d:\\data\\x.jsonl') or with forward slashes (d:/data/x.jsonl)")


def refuse_escaped_paths(data: Any, path: Path, lines: dict[KeyPath, int]) -> None:
    """A path holding a control character is a Windows path whose backslashes YAML took as escapes
    ("d:\\new" in double quotes is d, colon, newline, e, w): refused, never used as some other path."""
    problems = [Problem(f"{path}:{lines[loc]} {_dotted(loc)}" if loc in lines else f"{path} {_dotted(loc)}",
                        f"the path {value!r} holds a control character", WINDOWS_PATH_HINT)
                for loc, value in _path_values(data, ()) if any(ord(c) < 32 for c in value)]
    if problems:
        raise ConfigError(f"invalid config {path}", problems)


def _path_values(node: Any, loc: KeyPath) -> list[tuple[KeyPath, str]]:
    out: list[tuple[KeyPath, str]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        here = (*loc, key)
        if isinstance(value, str) and any(str(k) in PATH_KEYS for k in here[-2:] if isinstance(k, str)):
            out.append((here, value))
        elif isinstance(value, dict | list):
            out.extend(_path_values(value, here))
    return out


def _dotted(loc: KeyPath) -> str:
    return ".".join(str(p) for p in loc)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError("bad --set", [Problem(f"--set {item}", "expected KEY=VALUE", "e.g. --set lora.r=16")])
    key, _, value = item.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError("bad --set", [Problem(f"--set {item}", "empty key")])
    where = f"--set {item if len(item) <= 80 else item[:80] + '...'}"
    try:  # bounded like a config file: a --set value can be an alias bomb too
        parsed = safe_yaml.load(value, where, numbered=False)[0] if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return parts, parsed


def _apply_override(data: dict[str, Any], parts: list[str], value: Any, item: str) -> KeyPath:
    """Set one dotted key and return its key path (list items as indexes). List items are addressed by index,
    phases also by name."""
    node: Any = data
    loc: list[str | int] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            index = _list_index(node, part, item)
            loc.append(index if index >= 0 else len(node) + index)
            if last:
                node[index] = value
                return tuple(loc)
            node = node[index]
        elif isinstance(node, dict):
            loc.append(part)
            if last:
                node[part] = value
                return tuple(loc)
            if part not in node or node[part] is None:
                node[part] = {}
            node = node[part]
        else:
            raise ConfigError("bad --set", [Problem(f"--set {item}", f"'{'.'.join(parts[:i])}' is not a section")])
    return tuple(loc)


def _list_index(node: list[Any], part: str, item: str) -> int:
    if part.lstrip("-").isdigit():
        index = int(part)
        if -len(node) <= index < len(node):
            return index
        raise ConfigError("bad --set",
                          [Problem(f"--set {item}", f"index {index} is out of range (0..{len(node) - 1})")])
    named = [str(entry.get("name")) for entry in node if isinstance(entry, dict) and entry.get("name") is not None]
    for i, entry in enumerate(node):
        if isinstance(entry, dict) and entry.get("name") == part:
            return i
    close = difflib.get_close_matches(part, named, n=1, cutoff=0.6)
    hint = (f"did you mean '{close[0]}'?" if close else f"named items: {', '.join(named)}" if named
            else None) or "address it by index, e.g. 0"
    if len(named) < len(node):
        hint += "; items read from files are addressed by index"
    raise ConfigError("bad --set", [Problem(f"--set {item}", f"no list item named '{part}'", hint)])


def _model_at(model: type[BaseModel], loc: KeyPath) -> type[BaseModel] | None:
    """The schema class that owns the key at ``loc`` (for did-you-mean suggestions)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = _first_model(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _first_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def _problems(exc: ValidationError, root: type[BaseModel], path: Path, lines: dict[KeyPath, int],
              data: dict[str, Any], prefix: KeyPath = (), overrides: dict[KeyPath, str] | None = None,
              ) -> list[Problem]:
    out = []
    for err in exc.errors():
        loc: KeyPath = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        loc = tuple(p for p in loc if p not in ("str", "PhaseConfig", "list[str]"))
        written = as_written(loc, data)
        key = ".".join(str(p) for p in written) or "(top level)"
        line = lines.get((*prefix, *written)) or lines.get((*prefix, *written[:-1]))
        where = f"{path}:{line}" if line else str(path)
        message, hint = _describe(err, root, loc)
        sets = overrides or {}
        item = _override_of((*prefix, *written), sets) or _override_of((*prefix, *loc), sets)
        if item is not None:  # the value came from the command line: say so, not a line of the file
            out.append(Problem(f"--set {item if len(item) <= 80 else item[:80] + '...'}", message, hint))
            continue
        out.append(Problem(f"{where} {key}", message, hint))
    return out


def as_written(loc: KeyPath, data: Any) -> KeyPath:
    """A key path as the user wrote it: the stage keys of a single-stage phase, given at the phase level, are
    read as ``stages[0]`` (nova.config.schema) but reported where they stand (``training.learning_rate``)."""
    out: list[str | int] = []
    node, i = data, 0
    while i < len(loc):
        part = loc[i]
        single = isinstance(node, dict) and node.get("stages") in (None, [])  # its stage keys at the phase level
        if part == "stages" and single and loc[i + 1:i + 2] == (0,):
            i += 2  # the phase dict itself holds the stage's keys
            continue
        out.append(part)
        node = _child(node, part)
        i += 1
    return tuple(out)


def _child(node: Any, part: str | int) -> Any:
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and -len(node) <= part < len(node):
        return node[part]
    return None


def _override_of(loc: KeyPath, overrides: dict[KeyPath, str]) -> str | None:
    """The --set item that set the value at ``loc`` (or a section above it, or a key under it), if any."""
    for set_loc, item in overrides.items():
        n = min(len(set_loc), len(loc))
        if set_loc[:n] == loc[:n]:
            return item
    return None


def _describe(err: dict[str, Any], root: type[BaseModel], loc: KeyPath) -> tuple[str, str | None]:
    kind = err["type"]
    if kind == "extra_forbidden":
        owner = _model_at(root, loc[:-1])
        known = sorted(owner.model_fields) if owner else []
        if "stages" in known:  # a phase also takes its single stage's keys (read as stages[0])
            from nova.config.schema import StageConfig

            known = sorted({*known, *StageConfig.model_fields})
        close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else (f"known keys: {', '.join(known)}" if known else None)
        return "unknown key", hint
    if kind == "missing":
        return "required key is missing", "add it to the config"
    message = err["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    got = err.get("input")
    if kind not in ("model_type",) and not isinstance(got, dict | list) and got is not None:
        message = f"{message} (got {_shown(got)})"
    return message, None


def _shown(value: Any, limit: int = 80) -> str:
    """``repr`` of a bad value, cut to ``limit`` characters; repr itself can fail (an int of 5,000 digits)."""
    try:
        text = repr(value)
    except ValueError:
        return f"a {type(value).__name__} too long to show"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def load_yaml_config(path: str | Path, overrides: list[str] | None = None) -> LoadedConfig:
    """Load a phase or pipeline config (a file with a top-level ``phases:`` is a pipeline)."""
    path = Path(path)
    data, lines = read_yaml(path)
    overridden: dict[KeyPath, str] = {}
    for item in overrides or []:
        parts, value = _parse_override(item)
        overridden[_apply_override(data, parts, value, item)] = item
    if overrides:
        refuse_escaped_paths(data, path, lines)
    if "phases" in data:
        return _load_pipeline(path, data, lines, overridden)
    return LoadedConfig(path, _validate(PhaseConfig, data, path, lines, overrides=overridden), data)


def _validate(model: type[BaseModel], data: dict[str, Any], path: Path, lines: dict[KeyPath, int],
              prefix: KeyPath = (), overrides: dict[KeyPath, str] | None = None) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = _problems(exc, model, path, lines, data, prefix, overrides)
        raise ConfigError(f"invalid config {path}", problems) from None


def _load_pipeline(path: Path, data: dict[str, Any], lines: dict[KeyPath, int],
                   overrides: dict[KeyPath, str] | None = None) -> LoadedConfig:
    phases = data.get("phases")
    if not isinstance(phases, list) or not phases:
        raise ConfigError(f"invalid config {path}",
                          [Problem(f"{path} phases", "expected a non-empty list of phases (inline or file paths)")])
    problems: list[Problem] = []
    resolved: list[Any] = []
    for entry in phases:
        if isinstance(entry, str):
            phase_path = (path.parent / entry) if not Path(entry).is_absolute() else Path(entry)
            try:
                phase_data, phase_lines = read_yaml(phase_path)
                if "output_dir" in phase_data:
                    problems.append(Problem(f"{phase_path} output_dir", "a phase inside a pipeline writes to "
                                            "<pipeline output_dir>/<name>", "remove it from the phase file"))
                resolved.append(_validate(PhaseConfig, phase_data, phase_path, phase_lines).model_dump(
                    exclude_unset=True))
            except ConfigError as exc:
                problems.extend(exc.problems)
                resolved.append(None)
        else:
            resolved.append(entry)
    if problems:
        raise ConfigError(f"invalid config {path}", problems)
    merged = {**data, "phases": resolved}
    return LoadedConfig(path, _validate(PipelineConfig, merged, path, lines, overrides=overrides), merged)


def load_phase(path: str | Path, overrides: list[str] | None = None) -> PhaseConfig:
    loaded = load_yaml_config(path, overrides)
    if not isinstance(loaded.config, PhaseConfig):
        raise ConfigError(f"invalid config {path}", [Problem(str(path), "expected a phase config, got a pipeline")])
    return loaded.config


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    loaded = load_yaml_config(path, overrides)
    if not isinstance(loaded.config, PipelineConfig):
        raise ConfigError(f"invalid config {path}", [Problem(str(path), "expected a pipeline config")])
    return loaded.config
