"""Shared fixtures: a tiny random model (fast tests) and the real SmolLM2 (a few slow tests)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# Nothing in the test suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# nova's user cache (weight hashes, probe calibrations) stays out of the user's home: a user's stored probes
# must not move the tests' estimates.
os.environ["NOVA_CACHE_DIR"] = tempfile.mkdtemp(prefix="nova-test-cache-")

ROOT = Path(__file__).resolve().parents[1]
REAL_MODEL = Path(os.environ.get("NOVA_REAL_MODEL", ROOT / "models" / "smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random llama (2 layers, hidden 64) with a ChatML tokenizer whose pad equals eos."""
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def one_process(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """10 steps of micro batch 2 x accumulation 2 in one process: what 2 ranks, FSDP2 or 2 loopback nodes
    of micro batch 2 x accumulation 1 must reproduce (tests/train/test_distributed*.py), trained once."""
    from test_distributed import nova_train, write_config

    tmp = tmp_path_factory.mktemp("one-process")
    run = tmp / "one"
    done = nova_train(write_config(tmp, tiny_model_dir, run, micro_batch_size=2, gradient_accumulation_steps=2))
    assert done.returncode == 0, done.stderr[-3000:]
    return run


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    """SmolLM2-135M-Instruct imported by scripts/setup.sh; a missing model is a failure, not a skip."""
    if not (REAL_MODEL / "config.json").exists():
        pytest.fail(f"real model not found at {REAL_MODEL}: run 'bash scripts/setup.sh' first "
                    "(or set NOVA_REAL_MODEL)")
    return REAL_MODEL


def run_nova(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
             timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the real ``nova`` CLI in a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "nova", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def spawn(*argv: str) -> subprocess.Popen[bytes]:
    """A sleeping Python process whose command line carries ``argv`` (e.g. 'nova').

    Right after a vfork+exec the kernel can show an empty command line for a moment (as it does
    for a zombie), so wait until the new one is visible (psutil: the same on every platform).
    """
    import psutil

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *argv])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if psutil.Process(proc.pid).cmdline():
                break
        except psutil.Error:
            pass
        time.sleep(0.01)
    return proc


@pytest.fixture
def nova_process() -> Iterator[subprocess.Popen[bytes]]:
    """A live process whose command line says nova train (what a training run looks like)."""
    proc = spawn("nova", "train")
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def other_process() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that is not nova (a pid reused by something else)."""
    proc = spawn("not-the-trainer")
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has exited."""
    proc = spawn()
    proc.kill()
    proc.wait()
    return proc.pid


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On Windows, skip what needs POSIX signals (kill -9 a child): Windows has no SIGKILL, and its
    own stop signals (Ctrl-C, Ctrl-Break) are tested in tests/test_system.py."""
    if sys.platform != "win32":
        return
    skip = pytest.mark.skip(reason="needs POSIX signals (SIGKILL/SIGTERM to a child process)")
    for item in items:
        if "posix" in item.keywords:
            item.add_marker(skip)
