"""``nova infer``: what reaches the model loader, and from where (the command line, never the run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from nova.errors import NovaError
from run_fixtures import fake_run


class _Stop(Exception):
    """Raised by the fake loader once it has seen the model config: no weights are loaded."""


def _loaded_config(monkeypatch: pytest.MonkeyPatch, path: Path, **kwargs: Any) -> Any:
    import nova.model.loading as loading
    from nova.infer import load_model

    seen: dict[str, Any] = {}

    def fake_tokenizer(model_cfg: Any, source: Any = None) -> object:
        seen["tokenizer"] = model_cfg
        return object()

    def fake_base(model_cfg: Any, placement: Any, source: Any, **_: Any) -> None:
        seen["model"] = model_cfg
        raise _Stop

    monkeypatch.setattr(loading, "choose_placement", lambda *a, **k: None)
    monkeypatch.setattr(loading, "load_tokenizer", fake_tokenizer)
    monkeypatch.setattr(loading, "load_base_model", fake_base)
    with pytest.raises(_Stop):
        load_model(path, **kwargs)
    assert seen["tokenizer"] is seen["model"]
    return seen["model"]


def test_a_run_directory_never_turns_on_remote_code(tmp_path: Path, tiny_model_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    run = fake_run(tmp_path, tiny_model_dir, trust_remote_code=True)
    assert _loaded_config(monkeypatch, run).trust_remote_code is False
    cfg = _loaded_config(monkeypatch, run, trust_remote_code=True)
    assert cfg.trust_remote_code is True and cfg.base == str(tiny_model_dir)


def test_a_model_directory_takes_the_flag_too(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _loaded_config(monkeypatch, tiny_model_dir).trust_remote_code is False
    assert _loaded_config(monkeypatch, tiny_model_dir, trust_remote_code=True).trust_remote_code is True


@pytest.mark.parametrize("flag", [[], ["--trust-remote-code"]], ids=["default", "flag"])
def test_infer_command_passes_only_its_flag(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                            flag: list[str]) -> None:
    import nova.infer
    from nova.cli.main import app

    run = fake_run(tmp_path, tiny_model_dir, trust_remote_code=True)
    seen: dict[str, Any] = {}

    def fake_load(path: Any, **kwargs: Any) -> None:
        seen.update(kwargs)
        raise NovaError("stop")

    monkeypatch.setattr(nova.infer, "load_model", fake_load)
    result = CliRunner().invoke(app, ["infer", "--model", str(run), "--prompt", "hi", *flag])
    assert isinstance(result.exception, NovaError) and str(result.exception) == "stop"
    assert seen["trust_remote_code"] is bool(flag)


def test_a_prompt_past_the_model_context_is_refused_at_once(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The tiny model reads 512 positions: a 3,000-word prompt is one clear line naming the limit, no generation."""
    import os
    import subprocess
    import sys
    import time

    prompt = " ".join(["word"] * 3000)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "nova", "infer", "--model", str(tiny_model_dir), "--prompt", prompt,
                           "--max-new-tokens", "4"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "the model's context is 512 tokens" in done.stderr and "shorten the prompt" in done.stderr
    assert time.monotonic() - started < 120
