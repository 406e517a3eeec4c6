"""nova without POSIX: every module imports and the main commands run with fcntl, termios, resource,
pwd, grp (...) unavailable to nova's code and /proc absent for it, as on Windows and macOS.

This machine is Linux, so the other platforms are simulated where nova's code meets the OS
(tests/portability_guard.py); what only a Windows or macOS machine can show is left to the CI
workflow (.github/workflows/portability.yml). A static scan backs the run: a POSIX-only import
in a code path the commands do not reach would not be seen by the run alone.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from portability_guard import NOVA_SRC, POSIX_ONLY

TESTS = Path(__file__).resolve().parent
# (kind, what, by) the guard may see: the CPU's bf16 flags, which only Linux lists, behind nova.system.on_linux.
ALLOWED = {("proc", "/proc/cpuinfo", "nova.system")}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(TESTS)]), "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1"}


def _phase(tmp: Path, model: Path) -> Path:
    text = f"""
name: portable
model: {{base: {model}, quantization: nf4}}
lora: {{r: 4, alpha: 8, dropout: 0.0}}
data:
  datasets: [{{path: {ROOT / "data" / "sora_en.jsonl"}, max_samples: 24}}]
  eval_split: 0.0
  max_length: 64
training: {{max_steps: 8, micro_batch_size: 2, gradient_accumulation_steps: 1, learning_rate: 1.0e-3,
           warmup_steps: 0, logging_steps: 1, save_steps: 4, save_total_limit: 2, gradient_checkpointing: false,
           seed: 3}}
output_dir: {tmp / "run"}
logs_dir: {tmp / "logs"}
"""
    path = tmp / "phase.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.trains
def test_commands_run_without_posix_modules_or_proc(tiny_model_dir: Path, tmp_path: Path) -> None:
    _phase(tmp_path, tiny_model_dir)
    report = tmp_path / "blocked.json"
    proc = subprocess.run([sys.executable, str(TESTS / "portability_driver.py"), str(tmp_path), str(report)],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    steps = dict(re.findall(r"^step (\w+) exit (\d+)$", proc.stdout, re.MULTILINE))
    assert steps == {"help": "0", "data_check": "0", "preflight": "0", "train_stopped": "3", "train_resumed": "0",
                     "status": "0", "merge": "0", "export": "0"}, out[-4000:]
    logs = "".join(p.read_text(encoding="utf-8") for p in sorted((tmp_path / "logs").glob("*.log")))
    assert "SIGINT received: saving a checkpoint" in logs and re.search(r"resuming from \S+checkpoint-\d", logs), logs
    logged = json.loads(proc.stdout.split("metrics ", 1)[1].splitlines()[0])
    assert max(s for s in logged if s is not None) == 8  # the resumed run finished the schedule
    assert int(re.search(r"imported (\d+) nova modules", proc.stdout).group(1)) > 100  # type: ignore[union-attr]
    blocked = {(b["kind"], b["what"], b["by"]) for b in json.loads(report.read_text(encoding="utf-8"))}
    assert blocked <= ALLOWED, f"nova reached for what Windows/macOS lack: {sorted(blocked - ALLOWED)}"
    assert (tmp_path / "m.gguf").stat().st_size > 0


def test_the_guard_blocks_nova_code_and_only_nova_code(tmp_path: Path) -> None:
    """Without this, a guard that blocked nothing would let the run above pass."""
    fake = str(Path(NOVA_SRC) / "portability_fake.py")  # a file name inside nova's source: nova's code
    code = f"""
import sys, json
from pathlib import Path
import portability_guard
portability_guard.install(Path({str(tmp_path / "r.json")!r}))
results = {{}}
for name, src in (("import", "import fcntl"), ("import_module", "import importlib; importlib.import_module('pwd')"),
                  ("proc", "Path('/proc/self/status').read_text()")):
    try:
        exec(compile(src, {fake!r}, "exec"), {{"__name__": "nova.fake", "Path": Path}})
        results[name] = "allowed"
    except OSError:
        results[name] = "blocked"
    except ImportError:
        results[name] = "blocked"
import fcntl, psutil
psutil.Process().memory_info()  # third-party code reads /proc on Linux: allowed
Path("/proc/self/status").read_text()  # so does the test itself
results["others"] = "allowed"
print(json.dumps(results))
"""
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == {"import": "blocked", "import_module": "blocked", "proc": "blocked",
                                      "others": "allowed"}


POSIX_ATTRIBUTES = re.compile(r"\bos\.(sysconf|fork|getuid|geteuid|killpg|setsid|sched_getaffinity|pwrite|ftruncate|"
                              r"fchmod|getpgid|getloadavg|statvfs|mkfifo|WNOHANG)\b|\bsignal\.(SIGKILL|SIGHUP|SIGUSR1|"
                              r"SIGUSR2|SIGALRM|SIGCHLD|alarm|setitimer)\b|start_new_session|preexec_fn")


def test_no_nova_module_imports_a_posix_only_module_or_reads_proc() -> None:
    """Statically, over every module: what the run above cannot reach is checked here."""
    found = []
    for path in sorted(Path(NOVA_SRC).rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(text)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            found += [f"{path.name}: import {n}" for n in names if n.split(".")[0] in POSIX_ONLY]
        if path.name != "system.py":  # the one module that branches on the platform (nova.system)
            found += [f"{path.name}: {m.group(0)}" for m in POSIX_ATTRIBUTES.finditer(text)]
        if "/proc" in text and path.name != "system.py":  # system.py reads it on Linux only (on_linux)
            found.append(f"{path.name}: /proc")
    assert found == []


def _text_io_without_encoding(node: ast.Call) -> str | None:
    """``read_text()``, ``write_text(s)`` or a text-mode ``open()`` with no ``encoding=``: the locale's
    encoding then (cp1252 on most Windows machines), so a non-ASCII chat template or name breaks there."""
    if any(k.arg == "encoding" for k in node.keywords):
        return None
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if name in ("read_text", "write_text"):
        return name
    if name != "open" or (isinstance(func, ast.Attribute) and not isinstance(func.value, ast.Call | ast.Name)):
        return None
    owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
    if owner in ("os", "zf", "zipfile", "tarfile", "gzip", "io") or owner.endswith(("zf", "zip")):
        return None
    at = 0 if isinstance(func, ast.Attribute) else 1  # Path.open(mode), open(file, mode)
    mode = node.args[at] if len(node.args) > at else next((k.value for k in node.keywords if k.arg == "mode"), None)
    modes = [c.value for c in ast.walk(mode) if isinstance(c, ast.Constant)] if mode is not None else []
    return None if modes and all("b" in str(m) for m in modes) else "open"


def test_every_text_file_is_read_and_written_as_utf8() -> None:
    found = [f"{path.relative_to(NOVA_SRC)}:{node.lineno} {what}"
             for path in sorted(Path(NOVA_SRC).rglob("*.py"))
             for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.Call) and (what := _text_io_without_encoding(node))]
    assert found == []
