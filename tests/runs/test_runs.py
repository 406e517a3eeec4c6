"""The run-directory format: names, the validated config.yaml reader, checkpoints, torn files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from nova.config.schema import DataConfig, PhaseConfig, TrainingConfig
from nova.errors import NovaError
from nova.monitor.status import read_status
from nova.runs.checkpoints import SEAL, latest_checkpoint, list_checkpoints
from nova.runs.jsonl import read_jsonl_counted, trim_metrics
from nova.runs.layout import RunDir, stage_names
from nova.runs.record import AdapterRef, read_run, resolved_config, write_run_config


def _phase(name: str = "p", data: str = "missing/data.jsonl") -> PhaseConfig:
    # Validated with the "recorded" context: a run's data may have moved since it trained.
    from nova.config.base import RECORDED

    return PhaseConfig.model_validate({"name": name, "model": {"base": "some/model"},
                                       "data": {"datasets": [{"path": data}]}}, context=RECORDED)


def _adapter(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text("{}")
    return path


def test_stage_names_number_repeats() -> None:
    assert stage_names(["sft", "dpo", "sft", "sft"]) == ["sft", "dpo", "sft-2", "sft-3"]


def test_a_run_is_complete_only_with_adapter_and_marker(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    assert not run.is_complete
    _adapter(run.adapter)
    assert not run.is_complete
    run.complete_marker.write_text("{}")
    assert run.is_complete
    assert run.stage_adapter("sft") == tmp_path / "r" / "stages" / "sft" / "adapter"
    assert run.checkpoints("dpo") == tmp_path / "r" / "checkpoints" / "dpo"


def test_read_run_round_trips_and_does_not_need_the_data(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "sora")
    phase = _phase("sora")
    chain = [AdapterRef("doica", _adapter(tmp_path / "doica" / "adapter"))]
    write_run_config(run, resolved_config(phase, phase.model, chain, {"device": "cpu"}))  # type: ignore[arg-type]
    record = read_run(run.path)
    assert record.name == "sora" and record.model.base == "some/model"
    assert record.chain == (chain[0],) and record.resolved == {"device": "cpu"}
    assert [r.name for r in record.adapters] == ["doica", "sora"]
    with pytest.raises(NovaError, match="has no adapter"):
        record.require_adapters()
    _adapter(run.adapter)
    assert record.require_adapters()[-1].path == run.adapter


def test_chain_adapters_are_found_after_the_pipeline_moved(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    phase = _phase("sora")
    write_run_config(RunDir(new / "sora"), resolved_config(
        phase, phase.model, [AdapterRef("doica", old / "doica" / "adapter")]))  # type: ignore[arg-type]
    _adapter(new / "doica" / "adapter")
    _adapter(new / "sora" / "adapter")
    record = read_run(new / "sora")
    assert record.require_adapters()[0].path == new / "doica" / "adapter"
    (new / "doica" / "adapter" / "adapter_config.json").unlink()
    with pytest.raises(NovaError, match="earlier phase 'doica' is missing"):
        read_run(new / "sora").require_adapters()


@pytest.mark.parametrize("text, match", [
    (None, "not a nova run directory"),
    ("[1, 2", "cannot read"),
    ("- a list\n", "cannot read"),
    ("name: x\n", "no model section"),
    ("name: x\nmodel: {base: m}\ntraining: {learning_rat: 1}\n", "not a valid run config"),
    ("name: x\nmodel: {base: m}\n_chain: [{phase: 3}]\n", "_chain entry"),
])
def test_a_bad_run_config_is_one_clear_error(tmp_path: Path, text: str | None, match: str) -> None:
    tmp_path.joinpath("r").mkdir()
    if text is not None:
        (tmp_path / "r" / "config.yaml").write_text(text)
    with pytest.raises(NovaError, match=match):
        read_run(tmp_path / "r")


def test_status_of_a_run_with_a_garbage_config_says_so(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("name: [unclosed\n")
    (run / "metrics.jsonl").write_text(json.dumps({"stage": "sft", "step": 1, "loss": 2.0, "time": 1.0}) + "\n")
    ps = read_status(run).phases[0]
    assert ps.note and "config.yaml unreadable" in ps.note and ps.step == 1


def _checkpoint(root: Path, step: int, *, sealed: bool = True) -> Path:
    ck = root / f"checkpoint-{step}"
    ck.mkdir(parents=True)
    for name in ("optimizer.pt", "scheduler.pt"):
        (ck / name).write_bytes(b"x")
    (ck / "adapter_model.safetensors").write_bytes((2).to_bytes(8, "little") + b"{}")
    (ck / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if sealed:
        (ck / SEAL).write_text("{}")
    return ck


def test_latest_checkpoint_moves_broken_ones_aside_and_listing_moves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints" / "sft"
    _checkpoint(root, 10)
    _checkpoint(root, 20, sealed=False)
    assert [s for s, _, _ in list_checkpoints(root)] == [10]
    assert (root / "checkpoint-20").exists()
    said: list[str] = []
    assert latest_checkpoint(root, said.append) == root / "checkpoint-10"
    assert not (root / "checkpoint-20").exists() and any(p.name.startswith("broken-") for p in root.iterdir())
    assert "not sealed" in said[0]


def test_trim_metrics_skips_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    rows = [{"stage": "sft", "step": s, "loss": 1.0} for s in (1, 2, 3)] + [{"stage": "dpo", "step": 1}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"stage": "sft", "st')
    assert trim_metrics(path, "sft", 2) == 1
    kept, torn = read_jsonl_counted(path)
    assert torn == 0 and [(r["stage"], r["step"]) for r in kept] == [("sft", 1), ("sft", 2), ("dpo", 1)]
    trim_metrics(path, "sft", -1)
    assert [r["stage"] for r in read_jsonl_counted(path)[0]] == ["dpo"]


def test_changed_validates_and_keeps_what_was_set() -> None:
    t = TrainingConfig(micro_batch_size=4)
    assert t.changed(micro_batch_size=2).micro_batch_size == 2
    with pytest.raises(ValueError):
        t.changed(micro_batch_size=0)
    # eval_split was never set here: changing something else must not count it as set
    d = DataConfig.model_validate({"eval_datasets": [{"path": str(Path(__file__))}]})
    assert d.changed(max_length=64).max_length == 64
    assert yaml.safe_dump({"ok": True})  # yaml is importable without torch (the run reader needs only it)
