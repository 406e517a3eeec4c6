"""The CLI as users meet it: fast help, one clear error line, no traceback, nothing written on failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_nova


def test_help_does_not_import_heavy_packages() -> None:
    code = ("import sys; import nova.cli.main; "
            "heavy = [m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets', 'bitsandbytes') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_help_lists_the_commands() -> None:
    result = run_nova("--help")
    assert result.returncode == 0
    for command in ("train", "infer", "config", "models", "data"):
        assert command in result.stdout


def _good_data(tmp_path: Path) -> Path:
    f = tmp_path / "d.jsonl"
    f.write_text('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n')
    return f


BAD_CONFIGS = {
    "malformed": "name: t\nmodel: [oops\n",
    "unknown_key": "name: t\nmodel:\n  base: x/y\n  quantisation: nf4\ndata:\n  datasets:\n    - path: {data}\n",
    "wrong_type": ("name: t\nmodel:\n  base: x/y\ntraining:\n  max_steps: many\n"
                   "data:\n  datasets:\n    - path: {data}\n"),
    "missing_data": "name: t\nmodel:\n  base: x/y\ndata:\n  datasets:\n    - path: {missing}\n",
    "empty_data": "name: t\nmodel:\n  base: {model}\ndata:\n  datasets:\n    - path: {empty}\n",
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_input_gives_one_clear_line_and_writes_nothing(case: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "empty.jsonl").write_text("")
    text = BAD_CONFIGS[case].format(data=_good_data(tmp_path), missing=tmp_path / "nope.jsonl",
                                    empty=work / "empty.jsonl", model=tiny_model_dir)
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    before = sorted(p.name for p in work.iterdir())
    result = run_nova("train", "--config", str(config), cwd=work)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    first = result.stderr.strip().splitlines()[0]
    assert first.startswith("error: ")
    assert str(config) in result.stderr or "empty.jsonl" in result.stderr
    assert sorted(p.name for p in work.iterdir()) == before  # no checkpoints/ or logs/ left behind


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("name: t\nmodel: [oops\n")
    result = run_nova("--debug", "train", "--config", str(config))
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_config_reference_command() -> None:
    result = run_nova("config", "training")
    assert result.returncode == 0 and "training.learning_rate" in result.stdout
    bad = run_nova("config", "trainingg")
    assert bad.returncode != 0 and "no config section" in bad.stderr
