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
