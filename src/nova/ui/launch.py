"""Start, resume and stop ``nova train`` from the browser, refusing what the CLI would refuse.

A launch is the real command, ``nova train --config FILE [--fresh] [--force]``, as a child
process in its own session (closing the UI does not stop training, as closing a tmux pane
would not), so the lock, the fingerprint check on resume, and preflight's refusal are the
CLI's own. Before starting it the UI also checks, so the browser gets the answer at once:
the config must load, preflight must not fail, and no run directory of the plan (nor the
pipeline's output directory) may hold a live training process. Stopping sends SIGTERM, which
``nova train`` turns into a checkpoint at the end of the current step and exit code 3.

Each launch is recorded under ``<root>/.nova-ui/launches.jsonl`` with its config, run
directories and preflight verdict, so a run page can offer to resume it and show that
verdict after the UI restarts. The child's output goes to ``<root>/.nova-ui/logs/``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nova.errors import NovaError, printable
from nova.plan import make_plan
from nova.runs.jsonl import append_jsonl, read_jsonl
from nova.runs.process import read_process
from nova.system import ask_to_stop, own_process_group
from nova.ui.editor import preflight, save, shown, validate

STATE_DIR = ".nova-ui"
LOG_TAIL = 60


@dataclass(frozen=True)
class Options:
    """The flags of ``nova train`` the launch form offers (each means what it means on the CLI)."""

    fresh: bool = False
    force: bool = False
    resume_with_changes: bool = False

    def flags(self) -> list[str]:
        return [f for f, on in (("--fresh", self.fresh), ("--force", self.force),
                                ("--resume-with-changes", self.resume_with_changes)) if on]


class Launcher:
    """The training processes this UI started, and the record of every launch under the root."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.state = self.root / STATE_DIR
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.lock = threading.Lock()  # one launch at a time: two clicks cannot both pass the live-run check

    @property
    def record_file(self) -> Path:
        return self.state / "launches.jsonl"

    def records(self) -> list[dict[str, Any]]:
        return read_jsonl(self.record_file)

    def record_for(self, run_dir: Path) -> dict[str, Any] | None:
        """The newest launch that trained ``run_dir``."""
        target = str(run_dir.resolve())
        return next((r for r in reversed(self.records()) if target in (r.get("run_dirs") or [])), None)

    def launch(self, target: Path, text: str, options: Options) -> dict[str, Any]:
        """Check, save and start ``nova train`` on ``target``; a NovaError says why not."""
        with self.lock:
            checked = validate(target, text)
            if not checked.ok or checked.loaded is None:
                raise NovaError("the config does not load; nothing was started", hint=" / ".join(checked.lines))
            plan = make_plan(checked.loaded)
            dirs = [p.run_dir.resolve() for p in plan.phases]
            self._refuse_live([*dirs, *([Path(plan.pipeline.output_dir).resolve()] if plan.is_pipeline else [])])
            report = preflight(target, text)
            if report.get("verdict") == "fail":
                raise NovaError(f"preflight failed; nothing was started: {_failures(report)}",
                                hint="fix the problems preflight lists, then launch again")
            save(target, text)
            return self._start(target, dirs, options, report)

    def relaunch(self, run_dir: Path) -> dict[str, Any]:
        """Resume a run the UI launched before: the same config file, run again as it is now."""
        record = self.record_for(run_dir)
        if record is None:
            raise NovaError(f"{run_dir} was not launched from this ui, so its config file is not known",
                            hint="resume it with 'nova train --config <its config>', or open that config in the editor")
        config = Path(record["config"])
        if not config.is_file():
            raise NovaError(f"the config {config} of this run is gone", hint="open a config in the editor")
        return self.launch(config, config.read_text(encoding="utf-8"), Options())

    def _refuse_live(self, dirs: list[Path]) -> None:
        for d in dirs:
            process = read_process(d)
            if process.state in ("running", "other_host"):
                raise NovaError(f"run directory {shown(d)} is in use by {process.describe()}",
                                hint=f"wait for that run to end (nova status {shown(d)}), or stop it first")
        for key, child in self.children.items():
            if child.poll() is None and any(str(d) in self._dirs_of(key) for d in dirs):
                raise NovaError(f"launch {key} of this ui is still starting or training in {shown(dirs[0])}",
                                hint="wait for it, or stop it first")

    def _dirs_of(self, key: str) -> list[str]:
        return next((r.get("run_dirs") or [] for r in self.records() if r.get("id") == key), [])

    def _start(self, target: Path, dirs: list[Path], options: Options, report: dict[str, Any]) -> dict[str, Any]:
        key = time.strftime("%Y%m%d-%H%M%S") + f"-{len(self.children) + 1}"
        log = self.state / "logs" / f"{key}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "nova", "train", "--config", str(target), *options.flags()]
        with log.open("wb") as out:
            child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"}, **own_process_group())
        self.children[key] = child
        record = {"id": key, "config": str(target.resolve()), "flags": options.flags(), "pid": child.pid,
                  "started": time.time(), "log": str(log), "run_dirs": [str(d) for d in dirs],
                  "command": " ".join(["nova", "train", "--config", shown(target), *options.flags()]),
                  "preflight": {"verdict": report.get("verdict"), "checks": report.get("checks", []),
                                "error": report.get("error")}}
        append_jsonl(self.record_file, record)
        outside = [str(d) for d in dirs if self.root not in d.parents]
        notes = [f"{d} is outside the ui root {self.root}: the runs page will not list it" for d in outside]
        return {**{k: record[k] for k in ("id", "pid", "command", "run_dirs")}, "notes": notes}

    def stop(self, run_dir: Path) -> dict[str, Any]:
        """SIGTERM to the live training process of ``run_dir``: it checkpoints and exits (code 3)."""
        process = read_process(run_dir)
        if process.state != "running" or process.pid is None:
            for key, child in self.children.items():  # started, but not yet holding the run's lock
                if child.poll() is None and str(run_dir.resolve()) in self._dirs_of(key):
                    how = ask_to_stop(child.pid)
                    return {"stopped": child.pid, "how": f"{how} (before training began)"}
            raise NovaError(f"no training process is alive in {shown(run_dir)} ({process.describe()})")
        how = ask_to_stop(process.pid)
        return {"stopped": process.pid, "how": f"{how}: a checkpoint at the end of this step, then exit"}

    def view(self) -> list[dict[str, Any]]:
        """Every launch recorded, newest first, with its state and the end of its output."""
        out = []
        for record in reversed(self.records()[-20:]):
            child = self.children.get(str(record.get("id")))
            code = child.poll() if child is not None else None
            state = "running" if child is not None and code is None else (
                f"exited {code}" if child is not None else "started by an earlier ui")
            out.append({**record, "state": state, "log_tail": _tail(Path(str(record.get("log"))))})
        return out

    def reap(self) -> None:
        """Wait for children that ended (no zombies); called on every view."""
        for child in self.children.values():
            child.poll()


def _failures(report: dict[str, Any]) -> str:
    bad = [f"{c.get('name')}: {c.get('message')}" for c in report.get("checks", []) if c.get("status") == "fail"]
    return "; ".join(bad) or str(report.get("error") or "see the preflight report")


def _tail(path: Path) -> list[str]:
    """The last lines of a launch's output, ASCII, progress bars' carriage returns folded."""
    try:
        with path.open("rb") as fh:
            fh.seek(max(path.stat().st_size - 16384, 0))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    lines = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    return [printable(line) for line in lines if line.strip()][-LOG_TAIL:]
