"""Merge inputs without weights: remote code only by the flag, and a record without this machine's paths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from nova.errors import NovaError
from run_fixtures import fake_run


def test_plan_takes_trust_remote_code_from_the_request_only(tmp_path: Path, tiny_model_dir: Path) -> None:
    from nova.merge.inputs import MergeRequest, plan_merge

    run = fake_run(tmp_path, tiny_model_dir, trust_remote_code=True)
    assert plan_merge(MergeRequest(run_dir=run)).inputs.model_cfg.trust_remote_code is False
    trusted = plan_merge(MergeRequest(run_dir=run, trust_remote_code=True)).inputs.model_cfg
    assert trusted.trust_remote_code is True and trusted.base == str(tiny_model_dir)


@pytest.mark.parametrize("flag", [[], ["--trust-remote-code"]], ids=["default", "flag"])
def test_merge_command_passes_its_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag: list[str]) -> None:
    import nova.merge.run
    from nova.cli.main import app

    seen: list[Any] = []

    def fake_merge(request: Any, say: Any = None) -> None:
        seen.append(request)
        raise NovaError("stop")

    monkeypatch.setattr(nova.merge.run, "merge_run", fake_merge)
    result = CliRunner().invoke(app, ["merge", "--run", str(tmp_path), *flag])
    assert isinstance(result.exception, NovaError)
    assert seen[0].trust_remote_code is bool(flag)


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_merge_record_holds_no_absolute_path(tmp_path: Path, tiny_model_dir: Path) -> None:
    from nova.merge.inputs import MergeRequest, plan_merge
    from nova.merge.parity import Parity
    from nova.merge.write import write_info

    run = fake_run(tmp_path, tiny_model_dir)
    plan = plan_merge(MergeRequest(run_dir=run, out=tmp_path / "merged"))
    info = tmp_path / "nova_merge.json"
    write_info(info, plan, Parity(1e-7, 1e-7, 0.0, None))
    text = info.read_text()
    assert str(tmp_path) not in text and str(Path.home()) not in text
    data = json.loads(text)
    assert not [s for s in _strings(data) if s.startswith(("/", "~"))], data
    assert data["run_dir"] == "../runs/phase" and data["adapters"][0]["path"] == "../runs/phase/adapter"


def test_an_adapter_recorded_by_name_matches_its_base(tmp_path: Path, tiny_model_dir: Path) -> None:
    from nova.config.schema import ModelConfig
    from nova.merge.inputs import check_adapter_base
    from nova.runs import AdapterRef

    run = fake_run(tmp_path, tiny_model_dir)  # the adapter records the base's directory name
    ref = AdapterRef("phase", run / "adapter")
    check_adapter_base(ref, ModelConfig(base=str(tiny_model_dir)), str(tiny_model_dir))
    other = tmp_path / "other-model"
    with pytest.raises(NovaError, match=f"was trained on '{tiny_model_dir.name}'"):
        check_adapter_base(ref, ModelConfig(base=str(other)), str(other))
