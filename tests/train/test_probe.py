"""nova train --probe on the tiny model: real steps of each stage's worst micro batch, measured; its errors.

An SFT stage then a DPO stage (one phase) are probed on the tiny random model with real bitsandbytes
nf4, PEFT and TRL; the probe must measure a peak, compare it with the estimate of the same micro
batch, time the steps, and leave nothing in the run directory. A live run's directory is refused,
a bad config is a clear error, and out of memory during the probe is a verdict (the stage does not
fit, with a fix), not a crash.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_nova
from method_fixtures import write_method_data
from nova.config import load_yaml_config
from nova.console import RunLog
from nova.errors import NovaError
from nova.train.probe import run_probe, worst_rows

pytestmark = pytest.mark.trains  # real steps on the tiny model (about a minute on 2 cores)

TRAIN = ("{max_steps: 20, micro_batch_size: 2, gradient_accumulation_steps: 2, learning_rate: 1.0e-3, "
         "warmup_steps: 0, logging_steps: 5, eval_steps: 10, save_steps: 10, gradient_checkpointing: %s}")


def probe_yaml(tmp: Path, model: Path, checkpointing: str = "false") -> Path:
    files = write_method_data(tmp, n=16)
    text = f"""
name: p
model: {{base: {model}, quantization: nf4}}
output_dir: {tmp / "run"}
logs_dir: {tmp / "logs"}
stages:
  - method: sft
    data: {{datasets: [{{path: {files["sft"]}}}], eval_split: 0.0, max_length: 64, cache_dir: {tmp / "cache"}}}
    training: {TRAIN % checkpointing}
  - method: dpo
    data: {{datasets: [{{path: {files["pairs"]}}}], eval_split: 0.0, cache_dir: {tmp / "cache"}}}
    dpo: {{beta: 0.1, max_prompt_length: 32, max_completion_length: 16}}
    training: {TRAIN % checkpointing}
"""
    path = tmp / "probe.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, dict]:
    """``nova train --probe --json`` as a user runs it; stdout is the report and nothing else."""
    tmp = tmp_path_factory.mktemp("probe")
    cache = tmp / "cache-home"
    result = run_nova("train", "--config", str(probe_yaml(tmp, tiny_model_dir)), "--probe", "--probe-steps", "3",
                      "--json", "--probe-out", str(tmp / "probe.json"), env={"NOVA_CACHE_DIR": str(cache)})
    assert result.returncode == 0, result.stderr[-2000:]
    return tmp, json.loads(result.stdout)


def test_probe_measures_each_stage_beside_its_estimate(probed: tuple[Path, dict]) -> None:
    _, report = probed
    assert [s["label"] for s in report["stages"]] == ["p/sft", "p/dpo"]
    for stage in report["stages"]:
        assert stage["fits"] is True
        assert stage["measured_peak_bytes"] > 0 and stage["estimated_peak_bytes"] > 0
        detail = stage["measured_detail"]
        assert detail["alive_before_steps"] > 0  # the weights and the adapter, alive before the steps
        assert detail["steps_peak_above_that"] > 0  # the steps allocated: activations, gradients, Adam states
        assert stage["measured_peak_bytes"] == detail["alive_before_steps"] + detail["steps_peak_above_that"]
        assert stage["tokens_per_second"] > 0 and stage["eta_seconds"] > 0
        assert stage["micro_batch_size"] == 2


def test_worst_rows_are_the_longest_repeated() -> None:
    from datasets import Dataset

    labels = [[-100, 1, 1], [-100] * 3 + [1] * 6, [-100] * 3 + [1] * 2, [-100] * 3 + [1] * 4]
    data = Dataset.from_dict({"input_ids": [[1] * 3, [1] * 9, [1] * 5, [1] * 7], "labels": labels})
    rows, longest, trained = worst_rows(data, micro=2, steps=3)
    assert longest == 9 and trained == 10  # the 9- and 7-token rows train 6 and 4 positions
    assert sorted(len(r) for r in rows["input_ids"]) == [7, 7, 7, 9, 9, 9]
    pairs = Dataset.from_dict({"prompt_ids": [[1] * 4, [1] * 2], "chosen_ids": [[1] * 3, [1] * 9],
                               "rejected_ids": [[1] * 6, [1] * 1]})
    rows, longest, trained = worst_rows(pairs, micro=1, steps=2)
    assert longest == 11 and len(rows) == 2 and len(rows[0]["chosen_ids"]) == 9 and trained == 10


def test_probe_leaves_no_run_behind_and_writes_probe_json(probed: tuple[Path, dict]) -> None:
    tmp, report = probed
    assert not (tmp / "run").exists()
    assert json.loads((tmp / "probe.json").read_text())["stages"] == report["stages"]


def test_probe_stores_its_measurement_for_later_preflights(probed: tuple[Path, dict]) -> None:
    tmp, report = probed
    stored = json.loads((tmp / "cache-home" / "probe_calibration.json").read_text())
    assert len(stored) == 2  # one per stage: sft and dpo run different code paths
    measured = sorted(entry["measured_bytes"] for entry in stored.values())
    assert measured == sorted(s["measured_peak_bytes"] for s in report["stages"])
    assert all("|cpu|" in key for key in stored)


def test_probe_refuses_a_live_run_directory(tmp_path: Path, tiny_model_dir: Path) -> None:
    from nova.runs.lock import locked

    loaded = load_yaml_config(probe_yaml(tmp_path, tiny_model_dir))
    with locked(tmp_path / "run", "run directory"), pytest.raises(NovaError, match="in use by pid"):
        run_probe(loaded, steps=3, log=RunLog(None, quiet=True))


def test_probe_of_a_bad_config_is_one_clear_error(tmp_path: Path, tiny_model_dir: Path) -> None:
    path = probe_yaml(tmp_path, tiny_model_dir)
    path.write_text(path.read_text().replace("micro_batch_size: 2", "micro_batch_size: 0", 1))
    result = run_nova("train", "--config", str(path), "--probe")
    assert result.returncode != 0
    assert "micro_batch_size" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_out_of_memory_during_the_probe_is_a_fit_verdict(tmp_path: Path, tiny_model_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    import transformers

    real_step = transformers.Trainer.training_step
    calls = {"n": 0}

    def step(self: object, *args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if getattr(self.args, "per_device_train_batch_size", 0) and type(self).__name__.endswith("DPOTrainer"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "training_step", step)
    loaded = load_yaml_config(probe_yaml(tmp_path, tiny_model_dir))
    report = run_probe(loaded, steps=3, log=RunLog(None, quiet=True), out=tmp_path / "probe.json")
    sft, dpo = report.stages
    assert sft.fits and sft.measured_peak_bytes
    assert not dpo.fits and dpo.measured_peak_bytes is None
    assert "out of memory during the probe at micro batch 2" in dpo.verdict
    assert "micro_batch_size 2 -> 1" in dpo.fix
    assert not report.fits
    assert json.loads((tmp_path / "probe.json").read_text())["fits"] is False


def test_a_phase_whose_earlier_phase_has_not_trained_is_said_not_probed(tmp_path: Path, tiny_model_dir: Path) -> None:
    files = write_method_data(tmp_path, n=8)
    data = f"{{datasets: [{{path: {files['sft']}}}], eval_split: 0.0, max_length: 64, cache_dir: {tmp_path / 'c'}}}"
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"""
output_dir: {tmp_path / "out"}
phases:
  - {{name: a, model: {{base: {tiny_model_dir}, quantization: none}}, data: {data}, logs_dir: {tmp_path / "logs"}}}
  - {{name: b, start_from: a, data: {data}, logs_dir: {tmp_path / "logs"}}}
""")
    report = run_probe(load_yaml_config(path), phase="b", steps=3, log=RunLog(None, quiet=True))
    (stage,) = report.stages
    assert stage.label == "b/sft" and stage.measured_peak_bytes is None
    assert stage.verdict.startswith("not probed: phase 'a' has not finished")
    assert "--phase b --probe" in stage.fix
    assert not (tmp_path / "out").exists()
