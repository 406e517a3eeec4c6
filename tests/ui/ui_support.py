"""The UI tests' world: recorded runs under a root, a real ``nova ui`` serving it, and headless Chromium.

The runs are the recorded output of a real pipeline of the tiny model (tests/ui/fixtures/, see
its README) plus a "live" run whose nova.pid names a live process whose command line says nova
train, so the UI treats it as training; the tests append to its metrics.jsonl. The server is the
real CLI in a subprocess (``nova ui --port 0``), read from the URL it prints.

Browser tests need Debian's chromium and chromium-driver (``apt-get install -y chromium
chromium-driver``; ``.ci/run`` installs them) and selenium (the dev extra): without them they
skip, saying which is missing.

A test module imports the fixtures it uses (``from ui_support import server_fixture``): this is not a
conftest.py, because a second module named conftest would replace tests/conftest.py in sys.modules.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, spawn

RECORDED = Path(__file__).parent / "fixtures" / "demo"
CHROMIUM = os.environ.get("NOVA_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("NOVA_CHROMEDRIVER", "/usr/bin/chromedriver")


def materialize(dest: Path, rec: Path) -> Path:
    """The recorded pipeline at ``dest`` with its placeholders written back."""
    shutil.copytree(RECORDED, dest)
    for path in dest.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            if "@OUT@" in text or "@ROOT@" in text:
                path.write_text(text.replace("@OUT@", str(dest)).replace("@ROOT@", str(rec)), encoding="utf-8")
    return dest


def live_run(root: Path, pid: int) -> Path:
    """A run directory that is training now: Doica's files up to step 4, and a pid file naming ``pid``."""
    run = root / "live"
    run.mkdir()
    shutil.copy(root / "demo" / "doica" / "config.yaml", run / "config.yaml")
    lines = (root / "demo" / "doica" / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:5]) + "\n")
    (run / "nova.pid").write_text(json.dumps({"pid": pid, "host": os.uname().nodename, "started": time.time()}))
    return run


@pytest.fixture(scope="session", name="trainer_stand_in")
def trainer_stand_in_fixture() -> Iterator[subprocess.Popen[bytes]]:
    """A live process whose command line says 'nova train' (what the live run's pid file names)."""
    proc = spawn("nova", "train")
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture(scope="session", name="ui_root")
def ui_root_fixture(tmp_path_factory: pytest.TempPathFactory, trainer_stand_in: subprocess.Popen[bytes]) -> Path:
    root = tmp_path_factory.mktemp("ui-root")
    materialize(root / "demo", tmp_path_factory.mktemp("recorded"))
    live_run(root, trainer_stand_in.pid)
    return root


@pytest.fixture(scope="session", name="configs_dir")
def configs_dir_fixture(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, ui_root: Path) -> Path:
    """The editor's config directory: one config that trains the tiny model for long enough to stop it."""
    configs = tmp_path_factory.mktemp("configs")
    (configs / "tiny.yaml").write_text(f"""name: tiny
output_dir: {ui_root / "launched"}
model: {{base: {tiny_model_dir}, quantization: none}}
data: {{datasets: [{{path: {ROOT / "data" / "doica_ro.jsonl"}, max_samples: 20}}], eval_split: 0.2, max_length: 96}}
training: {{max_steps: 5000, micro_batch_size: 2, gradient_accumulation_steps: 1, logging_steps: 1,
           eval_steps: 5000, save_steps: 5000, gradient_checkpointing: false}}
""")
    return configs


class Server:
    """A running ``nova ui`` subprocess and its start-up URL."""

    def __init__(self, proc: subprocess.Popen[str], url: str) -> None:
        self.proc = proc
        self.url = url
        self.base = url.split("/?")[0]
        self.token = url.split("token=")[1]

    def at(self, path: str) -> str:
        """``path`` with the token (a first visit sets the cookie)."""
        sep = "&" if "?" in path else "?"
        return f"{self.base}{path}{sep}token={self.token}"


def start_server(root: Path, configs: Path, cwd: Path, *extra: str) -> Server:
    proc = subprocess.Popen([sys.executable, "-m", "nova", "ui", "--root", str(root), "--configs", str(configs),
                             "--port", "0", *extra], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 60
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if line.startswith("open: "):
            return Server(proc, line.split("open: ", 1)[1].strip())
    proc.kill()
    raise AssertionError("nova ui did not print its URL: " + "".join(seen))


@pytest.fixture(scope="session", name="server")
def server_fixture(ui_root: Path, configs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(ui_root, configs_dir, tmp_path_factory.mktemp("cwd"))
    yield srv
    srv.proc.terminate()
    srv.proc.wait(timeout=10)


def _why_no_browser() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"no chromium at {CHROMIUM}: apt-get install -y chromium chromium-driver (.ci/run does)"
    if not Path(CHROMEDRIVER).exists():
        return f"no chromedriver at {CHROMEDRIVER}: apt-get install -y chromium-driver (.ci/run does)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -e '.[dev]'"
    return None


@pytest.fixture(scope="session", name="browser")
def browser_fixture() -> Iterator[Any]:
    """Headless Debian Chromium driven through chromedriver (WebDriver)."""
    why = _why_no_browser()
    if why:
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def wait_for(predicate: Any, timeout: float = 20, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:  # the element is not there yet, or is being replaced
            last = exc
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")
