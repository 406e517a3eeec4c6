"""Runs you can trust: a resume never trains something else, checkpoints survive damage, one run per directory."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import ROOT
from nova.config import load_yaml_config
from nova.console import RunLog
from nova.errors import NovaError
from nova.runs.checkpoints import SEAL
from nova.train.fingerprint import ResumeMismatch
from nova.train.pipeline import run_config

pytestmark = pytest.mark.trains  # whole runs: outside the development loop (README, "Development")

BASE = {
    "name": "t",
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
    "data": {"datasets": [{"path": str(ROOT / "data" / "sora_en.jsonl"), "max_samples": 24}], "eval_split": 0.0,
             "max_length": 96},
    "training": {"max_steps": 5, "micro_batch_size": 2, "gradient_accumulation_steps": 1, "learning_rate": 1e-3,
                 "lr_scheduler": "constant", "warmup_steps": 0, "logging_steps": 1, "save_steps": 2,
                 "save_total_limit": 3, "gradient_checkpointing": False, "seed": 3},
}


def write_config(tmp: Path, model: Path, run: Path, **changes: Any) -> Path:
    """The base config with dotted-key changes, e.g. ``**{"training.learning_rate": 5e-4}``."""
    data = json.loads(json.dumps(BASE))
    data["model"] = {"base": str(model), "quantization": "none"}
    data["output_dir"] = str(run)
    data["logs_dir"] = str(tmp / "logs")
    for key, value in changes.items():
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    path = tmp / f"config-{len(list(tmp.glob('config-*')))}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class CrashAt:
    """A callback that fails once at a step (the error path saves a checkpoint there)."""

    def __new__(cls, step: int) -> Any:
        from transformers import TrainerCallback

        class _Crash(TrainerCallback):
            armed = True

            def on_step_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
                if state.global_step == step and self.armed:
                    self.armed = False
                    raise RuntimeError("simulated crash")

        return _Crash()


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A run that crashed at step 3 (checkpoints 2 and 3 on disk)."""
    tmp = tmp_path_factory.mktemp("interrupted")
    run = tmp / "run"
    with pytest.raises(RuntimeError, match="simulated"):
        run_config(load_yaml_config(write_config(tmp, tiny_model_dir, run)), log=RunLog(tmp / "log.txt"),
                   extra_callbacks=[CrashAt(3)])
    assert sorted(p.name for p in (run / "checkpoints" / "sft").iterdir()) == ["checkpoint-2", "checkpoint-3"]
    return run


def copy_run(interrupted: Path, tmp: Path) -> Path:
    run = tmp / "run"
    shutil.copytree(interrupted, run)
    return run


@pytest.mark.parametrize(("changes", "key"), [
    ({"training.learning_rate": 5e-4}, "training.learning_rate"),
    ({"training.max_steps": 7}, "training.max_steps"),
    ({"data.max_length": 64}, "data.key"),
    ({"lora.alpha": 16}, "lora.alpha"),
    ({"lora.r": 8}, "lora.r"),
    ({"lora.target_modules": ["q_proj", "v_proj", "k_proj"]}, "lora.target_modules"),
    ({"training.seed": 4}, "training.seed"),
])
def test_a_changed_setting_stops_the_resume_and_names_the_key(interrupted: Path, tiny_model_dir: Path,
                                                             tmp_path: Path, changes: dict[str, Any],
                                                             key: str) -> None:
    run = copy_run(interrupted, tmp_path)
    before = (run / "config.yaml").read_text()
    log = tmp_path / "log.txt"
    with pytest.raises(ResumeMismatch) as caught:
        run_config(load_yaml_config(write_config(tmp_path, tiny_model_dir, run, **changes)), log=RunLog(log))
    rendered = "\n".join(caught.value.lines())
    assert key in rendered and "--fresh" in rendered
    adjustable = key in ("training.learning_rate", "training.max_steps")
    assert ("--resume-with-changes" in rendered) == adjustable
    assert "loading" not in (log.read_text() if log.exists() else "")  # stopped before any weights loaded
    assert (run / "config.yaml").read_text() == before  # the record of the weights is untouched


def test_micro_batch_at_the_same_effective_batch_and_cadence_may_change(interrupted: Path, tiny_model_dir: Path,
                                                                       tmp_path: Path) -> None:
    run = copy_run(interrupted, tmp_path)
    cfg = write_config(tmp_path, tiny_model_dir, run, **{"training.micro_batch_size": 1,
                                                         "training.gradient_accumulation_steps": 2,
                                                         "training.logging_steps": 2, "training.save_steps": 3})
    log = tmp_path / "log.txt"
    run_config(load_yaml_config(cfg), log=RunLog(log))
    assert "resuming from" in log.read_text() and (run / "COMPLETE").exists()


def test_a_different_base_of_the_same_shape_is_noticed(interrupted: Path, tiny_model_dir: Path,
                                                       tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other)
    weights = load_file(str(other / "model.safetensors"))
    weights = {k: v + 0.01 if v.is_floating_point() else v for k, v in weights.items()}
    save_file(weights, str(other / "model.safetensors"), metadata={"format": "pt"})
    assert torch.is_tensor(next(iter(weights.values())))
    run = copy_run(interrupted, tmp_path)
    cfg = write_config(tmp_path, other, run)
    with pytest.raises(ResumeMismatch, match="other settings") as caught:
        run_config(load_yaml_config(cfg), log=RunLog(tmp_path / "log.txt"))
    assert "model.identity" in "\n".join(caught.value.lines())


def test_resume_with_changes_applies_the_new_rate_and_records_it(interrupted: Path, tiny_model_dir: Path,
                                                                tmp_path: Path) -> None:
    from transformers import TrainerCallback

    seen: list[float] = []

    class Rate(TrainerCallback):
        def on_step_begin(self, args, state, control, optimizer=None, **kwargs):  # type: ignore[no-untyped-def]
            seen.append(optimizer.param_groups[0]["lr"])

    run = copy_run(interrupted, tmp_path)
    cfg = write_config(tmp_path, tiny_model_dir, run, **{"training.learning_rate": 5e-4, "training.max_steps": 6})
    log = tmp_path / "log.txt"
    run_config(load_yaml_config(cfg), log=RunLog(log), resume_with_changes=True, extra_callbacks=[Rate()])
    assert seen and all(lr == pytest.approx(5e-4) for lr in seen)  # constant schedule: exactly the new rate
    text = log.read_text()
    assert "resuming from" in text and "training.learning_rate 0.001 -> 0.0005" in text
    resolved = yaml.safe_load((run / "config.yaml").read_text())["_resolved"]["resumed_with_changes"]
    assert resolved == [{"stage": "sft", "at_step": 3, "training.learning_rate": [0.001, 0.0005],
                         "training.max_steps": [5, 6]}]
    done = json.loads((run / "stages" / "sft" / "DONE").read_text())
    assert done["steps"] == 6


def test_without_the_guard_the_old_rate_would_be_used(interrupted: Path, tiny_model_dir: Path,
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control for the test above: the restored scheduler alone keeps the checkpoint's rate."""
    from transformers import TrainerCallback

    import nova.train.machinery.resilience as resilience

    monkeypatch.setattr(resilience, "apply_peak_lr", lambda *a: None)
    seen: list[float] = []

    class Rate(TrainerCallback):
        def on_step_begin(self, args, state, control, optimizer=None, **kwargs):  # type: ignore[no-untyped-def]
            seen.append(optimizer.param_groups[0]["lr"])

    run = copy_run(interrupted, tmp_path)
    cfg = write_config(tmp_path, tiny_model_dir, run, **{"training.learning_rate": 5e-4})
    run_config(load_yaml_config(cfg), log=RunLog(tmp_path / "log.txt"), resume_with_changes=True,
               extra_callbacks=[Rate()])
    assert seen and seen[0] == pytest.approx(1e-3)


def test_a_finished_phase_is_not_reused_after_a_change(tiny_model_dir: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run_config(load_yaml_config(write_config(tmp_path, tiny_model_dir, run)), log=RunLog(tmp_path / "a.txt"))
    assert (run / "COMPLETE").exists()
    log = tmp_path / "b.txt"
    capsys.readouterr()
    run_config(load_yaml_config(write_config(tmp_path, tiny_model_dir, run)), log=RunLog(log))
    assert "already finished" in capsys.readouterr().out
    changed = write_config(tmp_path, tiny_model_dir, run, **{"training.learning_rate": 2e-3})
    with pytest.raises(ResumeMismatch, match="--force") as caught:
        run_config(load_yaml_config(changed), log=RunLog(log))
    assert "training.learning_rate" in "\n".join(caught.value.lines())
    run_config(load_yaml_config(changed), log=RunLog(log), force=True)
    assert json.loads((run / "COMPLETE").read_text())["fingerprints"][0]["values"]["training.learning_rate"] == 2e-3


def test_a_truncated_checkpoint_falls_back_to_the_older_one(interrupted: Path, tiny_model_dir: Path,
                                                            tmp_path: Path) -> None:
    run = copy_run(interrupted, tmp_path)
    weights = run / "checkpoints" / "sft" / "checkpoint-3" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    log = tmp_path / "log.txt"
    run_config(load_yaml_config(write_config(tmp_path, tiny_model_dir, run)), log=RunLog(log))
    text = log.read_text()
    assert "skipping checkpoint-3" in text and "truncated" in text and "resuming from" in text
    assert "(step 2)" in text and (run / "COMPLETE").exists()


def test_a_checkpoint_whose_optimizer_does_not_load_falls_back(interrupted: Path, tiny_model_dir: Path,
                                                               tmp_path: Path) -> None:
    run = copy_run(interrupted, tmp_path)
    newest = run / "checkpoints" / "sft" / "checkpoint-3"
    seal = json.loads((newest / SEAL).read_text())
    optimizer = newest / "optimizer.pt"
    optimizer.write_bytes(b"\0" * optimizer.stat().st_size)  # same size, not a pickle
    seal["files"]["optimizer.pt"].pop("sha256")  # as if too large to hash: only its size is sealed
    (newest / SEAL).write_text(json.dumps(seal))
    log = tmp_path / "log.txt"
    run_config(load_yaml_config(write_config(tmp_path, tiny_model_dir, run)), log=RunLog(log))
    assert "optimizer.pt does not load" in log.read_text() and "(step 2)" in log.read_text()


def test_a_torn_metrics_line_does_not_break_the_resume(interrupted: Path, tiny_model_dir: Path,
                                                       tmp_path: Path) -> None:
    run = copy_run(interrupted, tmp_path)
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write('{"stage": "sft", "step": 4, "lo')  # the disk filled mid-line
    log = tmp_path / "log.txt"
    run_config(load_yaml_config(write_config(tmp_path, tiny_model_dir, run)), log=RunLog(log))
    assert "skipped 1 unreadable line" in log.read_text() and (run / "COMPLETE").exists()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sorted(r["step"] for r in rows if "loss" in r) == [1, 2, 3, 4, 5]


def test_leftover_temp_and_broken_checkpoints_are_cleaned(interrupted: Path, tiny_model_dir: Path,
                                                          tmp_path: Path) -> None:
    run = copy_run(interrupted, tmp_path)
    root = run / "checkpoints" / "sft"
    (root / ".tmp-checkpoint-4").mkdir()
    for i in range(4):
        (root / f"broken-checkpoint-9-{i}").mkdir()
        time.sleep(0.01)
    run_config(load_yaml_config(write_config(tmp_path, tiny_model_dir, run)), log=RunLog(tmp_path / "log.txt"))
    names = sorted(p.name for p in root.iterdir())
    assert not any(n.startswith(".tmp-") for n in names)
    assert [n for n in names if n.startswith("broken-")] == ["broken-checkpoint-9-2", "broken-checkpoint-9-3"]


def test_fresh_refuses_a_directory_nova_did_not_make(tiny_model_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "mine"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "precious.txt").write_text("keep me")
    with pytest.raises(NovaError, match="not made by nova"):
        run_config(load_yaml_config(write_config(tmp_path, tiny_model_dir, run)), log=RunLog(tmp_path / "l.txt"),
                   fresh=True)
    assert (run / "checkpoints" / "precious.txt").read_text() == "keep me"


def test_a_failed_validation_leaves_no_directory(tiny_model_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "never"
    bad = write_config(tmp_path, tiny_model_dir, run, **{"data.max_length": 9})  # nothing trainable fits
    with pytest.raises(NovaError):
        run_config(load_yaml_config(bad), log=RunLog(tmp_path / "l.txt"))
    assert not run.exists()


def test_a_second_run_on_the_same_directory_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    slow = write_config(tmp_path, tiny_model_dir, run, **{"training.max_steps": 400, "training.save_steps": 1000})
    first = subprocess.Popen([sys.executable, "-m", "nova", "train", "--config", str(slow), "--no-preflight"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (run / "metrics.jsonl").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.1)
        assert first.poll() is None, first.communicate()[1][-2000:]
        for extra in ([], ["--fresh"]):
            second = subprocess.run([sys.executable, "-m", "nova", "train", "--config", str(slow), "--no-preflight",
                                     *extra], capture_output=True, text=True, timeout=120)
            assert second.returncode == 2, second.stderr
            assert f"in use by pid {first.pid} on host" in second.stderr and "Traceback" not in second.stderr
        assert (run / "metrics.jsonl").exists()  # --fresh deleted nothing of the live run
    finally:
        first.kill()
        first.wait()
    # killed: the kernel released its lock, so the stale pid file blocks nothing
    assert (run / "nova.pid").exists()
    resumed = subprocess.run([sys.executable, "-m", "nova", "train", "--config", str(slow), "--no-preflight",
                              "--set", "training.max_steps=2", "--fresh"], capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
