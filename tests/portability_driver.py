"""Run nova's main commands in one process with POSIX-only modules and /proc out of nova's reach.

``python portability_driver.py WORK REPORT``: installs tests/portability_guard.py, imports every
nova module, then runs ``--help``, ``data check``, ``preflight``, ``train`` stopped by a Ctrl-C
(SIGINT raised in the process, as a console delivers it on Windows too) and resumed, ``status``,
``merge`` and ``export``, each as ``nova.cli.main.run`` runs it for a user. It prints one line
``step <name> exit <code>`` per command and writes what the guard blocked to REPORT.
(tests/test_portability.py checks both.)
"""

from __future__ import annotations

import sys
from pathlib import Path

WORK, REPORT = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, str(Path(__file__).resolve().parent))

import portability_guard  # noqa: E402  (before nova: every nova import is guarded)

portability_guard.install(REPORT)

import json  # noqa: E402
import pkgutil  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402


def import_every_module() -> int:
    import nova

    names = [m.name for m in pkgutil.walk_packages(nova.__path__, "nova.") if m.name != "nova.__main__"]
    for name in names:  # nova.__main__ runs the CLI when imported
        __import__(name)
    return len(names)


def nova(name: str, *args: str) -> int:
    from nova.cli.main import run

    sys.argv = ["nova", *args]
    try:
        run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    else:
        code = 0
    print(f"step {name} exit {code}", flush=True)
    return code


def ctrl_c_after_first_step(run_dir: Path) -> None:
    """Press Ctrl-C once the run has logged a step (what a user does to stop a run cleanly)."""
    def watch() -> None:
        metrics = run_dir / "metrics.jsonl"
        deadline = time.time() + 300
        while time.time() < deadline:
            if metrics.exists() and '"loss"' in metrics.read_text(encoding="utf-8"):
                signal.raise_signal(signal.SIGINT)
                return
            time.sleep(0.01)

    threading.Thread(target=watch, daemon=True).start()


def main() -> None:
    print(f"imported {import_every_module()} nova modules", flush=True)
    config = str(WORK / "phase.yaml")
    run_dir = WORK / "run"
    nova("help", "--help")
    nova("data_check", "data", "check", "--config", config)
    nova("preflight", "preflight", "--config", config)
    ctrl_c_after_first_step(run_dir)
    nova("train_stopped", "train", "--config", config, "--no-preflight")
    nova("train_resumed", "train", "--config", config, "--no-preflight")
    nova("status", "status", str(run_dir), "--json")
    nova("merge", "merge", "--run", str(run_dir), "--out", str(WORK / "merged"))
    nova("export", "export", "--model", str(WORK / "merged"), "--format", "gguf", "--out", str(WORK / "m.gguf"))
    print("metrics " + json.dumps([json.loads(line).get("step") for line in
                                   (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]))


if __name__ == "__main__":
    main()
