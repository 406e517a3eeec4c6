"""A directory is nova's only by nova's own marker: someone's config.yaml, metrics.jsonl or pipeline.json
proves nothing, and nova train never writes into (or deletes from) such a directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from nova.config import load_yaml_config
from nova.console import RunLog
from nova.errors import NovaError
from nova.runs.layout import LOCK_FILE, RUN_MARKER, RunDir
from nova.runs.lock import check_run_dir, made_by_nova
from nova.runs.state import PipelineState, check_pipeline, check_pipeline_dir
from nova.train.pipeline import run_config


def _someones_project(path: Path) -> dict[str, bytes]:
    """A project folder with files named like a run's: config.yaml, metrics.jsonl, checkpoints/, stages/."""
    (path / "checkpoints").mkdir(parents=True)
    (path / "stages").mkdir()
    (path / "config.yaml").write_text("project: mine\nlr: 0.1\n")
    (path / "metrics.jsonl").write_text('{"acc": 0.9}\n')
    (path / "checkpoints" / "best.pt").write_bytes(b"weights")
    (path / "stages" / "notes.md").write_text("stage notes")
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_a_config_yaml_alone_does_not_make_a_run(tmp_path: Path) -> None:
    _someones_project(tmp_path / "proj")
    assert not made_by_nova(tmp_path / "proj")
    with pytest.raises(NovaError, match=r"not made by nova .*config.yaml.*no nova_run.json"):
        check_run_dir(RunDir(tmp_path / "proj"))


def test_the_marker_or_nova_s_own_record_makes_a_run(tmp_path: Path) -> None:
    marked, legacy = tmp_path / "marked", tmp_path / "legacy"
    marked.mkdir()
    legacy.mkdir()
    (marked / "config.yaml").write_text("project: mine\n")
    (marked / RUN_MARKER).write_text("{}")
    (legacy / "config.yaml").write_text(yaml.safe_dump({"name": "p", "_resolved": {"base": "/m", "device": "cpu"}}))
    (legacy / "metrics.jsonl").write_text("{}\n")
    for path in (marked, legacy):
        assert made_by_nova(path)
        check_run_dir(RunDir(path))


def _config(tmp: Path, model: Path, out: Path) -> Path:
    path = tmp / "c.yaml"
    path.write_text(f"""
name: p
model: {{base: {model}, quantization: none}}
data: {{datasets: [{{path: {ROOT / "data" / "sora_en.jsonl"}, max_samples: 8}}], eval_split: 0.0, max_length: 64}}
training: {{max_steps: 1, micro_batch_size: 2, gradient_accumulation_steps: 1, learning_rate: 1.0e-4}}
output_dir: {out}
logs_dir: {tmp / "logs"}
""")
    return path


@pytest.mark.parametrize("fresh", [False, True])
def test_train_refuses_someones_folder_and_writes_nothing_there(tmp_path: Path, tiny_model_dir: Path,
                                                                fresh: bool) -> None:
    before = _someones_project(tmp_path / "proj")
    loaded = load_yaml_config(_config(tmp_path, tiny_model_dir, tmp_path / "proj"))
    with pytest.raises(NovaError, match="not made by nova"):
        run_config(loaded, fresh=fresh, log=RunLog(tmp_path / "log.txt"))
    assert _files(tmp_path / "proj") == before  # no config.yaml rewritten, no metrics appended, nothing deleted
    assert not (tmp_path / "proj" / LOCK_FILE).exists()


def test_someones_pipeline_json_is_not_adopted(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "pipeline.json").write_text(json.dumps({"stages": ["build", "deploy"]}))
    with pytest.raises(NovaError, match=r"pipeline\.json that nova did not write"):
        check_pipeline_dir(out)
    (out / "pipeline.json").write_text(json.dumps({"phases": {"a": {"status": "done", "run_dir": str(out / "a")}}}))
    check_pipeline_dir(out)  # a pipeline written by nova before the marker existed


def test_a_pipeline_json_with_junk_entries_is_one_clear_error(tmp_path: Path) -> None:
    from nova.monitor.status import read_status

    out = tmp_path / "out"
    out.mkdir()
    (out / RUN_MARKER).write_text("{}")
    junk = {"phases": {"a": 3, "b": ["x"], "c": {"status": "done", "run_dir": 7}}}
    (out / "pipeline.json").write_text(json.dumps(junk))
    with pytest.raises(NovaError, match=r"3 of 3 phase entries are not nova's \('a', 'b', 'c'\)"):
        read_status(out)  # not "0 phases"
    with pytest.raises(NovaError, match="not pipeline state nova can read"):
        PipelineState(out / "pipeline.json", [])


def test_the_first_pipeline_write_marks_the_directory(tmp_path: Path) -> None:
    from nova.runs.state import PhaseEntry

    out = tmp_path / "out"
    out.mkdir()
    state = PipelineState(out / "pipeline.json", [PhaseEntry("a", RunDir(out / "a"), None)])
    state.update("a", status="running")
    assert (out / RUN_MARKER).is_file()
    check_pipeline(out / "pipeline.json")
