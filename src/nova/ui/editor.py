"""The config editor's checks: validation with nova's own loader, and preflight as the CLI runs it.

The text in the editor is checked as a file beside the one it will be saved as (a hidden
sibling, removed at once), so a pipeline's phase files resolve as they will from the saved
file, and the loader's messages are the CLI's own, with the sibling's name put back to the
file's. Preflight runs as ``nova preflight --json`` in a child process: the same checks and
verdict as the command line, and the heavy imports it needs stay out of the UI's process.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nova.config.load import LoadedConfig, load_yaml_config
from nova.errors import NovaError, ProblemList, printable
from nova.files import write_text_atomic
from nova.ui.security import inside

SUFFIXES = (".yaml", ".yml")
MAX_TEXT = 1 << 20  # as the loader's own limit: a config is a short YAML file
PREFLIGHT_TIMEOUT_S = 600
LINE = re.compile(r":(\d+)\b")


@dataclass
class Checked:
    """The result of validating the editor's text: the CLI's lines, and each problem's line number."""

    ok: bool
    lines: list[str] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)
    loaded: LoadedConfig | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "lines": self.lines, "problems": self.problems}


def config_path(configs: Path, rel: str) -> Path:
    """The YAML file ``rel`` under the editor's config directory (nothing else is read or written)."""
    if not rel.endswith(SUFFIXES):
        raise NovaError(f"{rel} is not a YAML file", hint="config files end in .yaml or .yml")
    return inside(configs, rel)


def list_configs(configs: Path) -> list[str]:
    """The YAML files under the config directory, relative to it."""
    if not configs.is_dir():
        return []
    base = configs.resolve()
    return sorted(p.relative_to(base).as_posix() for p in base.rglob("*")
                  if p.suffix in SUFFIXES and p.is_file() and not any(s.startswith(".") for s in p.parts))


def shown(path: Path) -> str:
    """A path as the user would have typed it to the CLI: relative to where nova runs when it can be."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@contextlib.contextmanager
def draft(target: Path, text: str) -> Iterator[Path]:
    """``text`` as a hidden file beside ``target`` for the length of the block."""
    if len(text.encode("utf-8", errors="replace")) > MAX_TEXT:
        raise NovaError(f"the config is larger than {MAX_TEXT} bytes", hint="a config is a short YAML file")
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.stem}.nova-ui-{secrets.token_hex(4)}{target.suffix}")
    temp.write_text(text, encoding="utf-8")
    try:
        yield temp
    finally:
        with contextlib.suppress(OSError):
            temp.unlink()


def _problems(exc: NovaError, temp: str, name: str) -> list[dict[str, Any]]:
    items = exc.problems if isinstance(exc, ProblemList) else []
    out = []
    for p in items:
        text = p.render().replace(temp, name)
        line = LINE.search(p.where) if temp in p.where else None
        out.append({"line": int(line.group(1)) if line else None, "text": printable(text)})
    return out


def validate(target: Path, text: str) -> Checked:
    """Load ``text`` as ``target`` with nova's loader: every problem, as ``nova train`` would print it."""
    name = shown(target)
    with draft(target, text) as temp:
        try:
            loaded = load_yaml_config(temp)
        except NovaError as exc:
            lines = exc.lines()
            lines = [printable(("error: " if i == 0 else "") + s.replace(str(temp), name)) for i, s in enumerate(lines)]
            return Checked(False, lines, _problems(exc, str(temp), name))
    loaded = LoadedConfig(target, loaded.config, loaded.raw)
    kind = "pipeline" if loaded.is_pipeline else "phase"
    return Checked(True, [f"{name}: a valid {kind} config"], [], loaded)


def save(target: Path, text: str) -> None:
    """Write the editor's text to its file (temp-then-rename: a reader never sees half of it)."""
    write_text_atomic(target, text)


def preflight(target: Path, text: str) -> dict[str, Any]:
    """``nova preflight --json`` on the editor's text: ``{verdict, checks, lines, estimate}`` or ``{error}``."""
    name = shown(target)
    with draft(target, text) as temp:
        try:
            done = subprocess.run([sys.executable, "-m", "nova", "preflight", "--config", str(temp), "--json"],
                                  capture_output=True, text=True, timeout=PREFLIGHT_TIMEOUT_S,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=False)
        except subprocess.TimeoutExpired:
            return {"error": f"preflight took longer than {PREFLIGHT_TIMEOUT_S} s", "verdict": "fail"}
    try:
        report = json.loads(done.stdout)
    except ValueError:
        lines = [s.replace(str(temp), name) for s in (done.stderr or done.stdout).strip().splitlines()]
        return {"error": printable(" ".join(lines[-3:]) or f"preflight exited with {done.returncode}"),
                "verdict": "fail"}
    report["checks"] = [{k: printable(str(v)).replace(str(temp), name) for k, v in c.items()}
                        for c in report.get("checks", [])]
    return report
