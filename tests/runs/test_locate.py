"""A run's base model is found from what the run recorded (absolute, or relative to the run), never from the
directory a later command runs in; a local base that is gone is one clear error at once (nova.runs.locate)."""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from conftest import run_nova
from nova.errors import NovaError
from nova.runs import RunDir, read_run
from nova.runs.locate import located_model
from nova.runs.record import resolved_config, write_run_config
from run_fixtures import fake_run


def _recorded_run(tree: Path, model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run written the way training writes config.yaml: model.base relative to where training ran (tree)."""
    from nova.config.schema import ModelConfig, PhaseConfig

    monkeypatch.chdir(tree)
    relative = str(model.relative_to(tree))
    run = RunDir(tree / "checkpoints" / "demo" / "doica")
    fake_run(tree / "checkpoints", model)  # an adapter trained on the base
    shutil.move(str(tree / "checkpoints" / "runs" / "phase"), run.path)
    phase = PhaseConfig.model_validate({"name": "doica", "model": {"base": relative, "quantization": "none"}})
    model_cfg = ModelConfig(base=relative, quantization="none")
    write_run_config(run, resolved_config(phase, model_cfg, [], {"base": relative}))
    monkeypatch.chdir(tree.parent)  # later commands run elsewhere
    return run.path


def test_the_recorded_base_is_found_from_any_directory(tmp_path: Path, tiny_model_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    tree = tmp_path / "work"
    shutil.copytree(tiny_model_dir, tree / "models" / "tiny")
    run = _recorded_run(tree, tree / "models" / "tiny", monkeypatch)
    written = yaml.safe_load((run / "config.yaml").read_text())
    assert written["model"]["base"] == "models/tiny"  # the config as it ran is kept
    assert written["_resolved"]["locations"]["base"] == {"path": str(tree / "models" / "tiny"),
                                                         "from_run": "../../../models/tiny"}
    assert located_model(read_run(run)).base == str(tree / "models" / "tiny")
    moved = tmp_path / "elsewhere"  # the whole tree copied to another machine or disk: the relative record holds
    shutil.move(str(tree), moved)
    assert Path(located_model(read_run(moved / "checkpoints" / "demo" / "doica")).base).resolve() == \
        (moved / "models" / "tiny").resolve()


def test_a_missing_local_base_is_reported_at_once(tmp_path: Path, tiny_model_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    tree = tmp_path / "work"
    shutil.copytree(tiny_model_dir, tree / "models" / "tiny")
    run = _recorded_run(tree, tree / "models" / "tiny", monkeypatch)
    shutil.rmtree(tree / "models")
    with pytest.raises(NovaError, match="base model is not where training found it") as caught:
        located_model(read_run(run))
    assert str(tree / "models" / "tiny") in str(caught.value)
    started = time.monotonic()
    result = run_nova("export", "--run", str(run), "--format", "peft", "--out", str(tmp_path / "x"), cwd=tmp_path)
    assert result.returncode == 2 and "not where training found it" in result.stderr, result.stderr
    assert time.monotonic() - started < 60 and "couldn't connect" not in result.stderr  # no hub retries


def test_a_run_without_the_record_looks_beside_and_above_itself(tmp_path: Path, tiny_model_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    tree = tmp_path / "work"
    shutil.copytree(tiny_model_dir, tree / "models" / "tiny")
    run = _recorded_run(tree, tree / "models" / "tiny", monkeypatch)
    config = yaml.safe_load((run / "config.yaml").read_text())
    del config["_resolved"]["locations"]  # written by an older nova
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert Path(located_model(read_run(run)).base) == (tree / "models" / "tiny").resolve()
    shutil.rmtree(tree / "models")
    record = read_run(run)
    spelled_local = replace(record, model=record.model.changed(base="./models/tiny"), resolved={})
    with pytest.raises(NovaError, match="not found relative to the run"):
        located_model(spelled_local)
