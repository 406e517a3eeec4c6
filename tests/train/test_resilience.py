"""Runs that survive: kill -9 and resume to the same result, SIGTERM, OOM recovery, NaN stop, checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from nova.config import load_yaml_config
from nova.console import RunLog
from nova.runs.checkpoints import SEAL, latest_checkpoint, rotate
from nova.train.pipeline import run_config

pytestmark = pytest.mark.trains  # whole runs: outside the development loop (README, "Development")


def config(tmp: Path, model: Path, name: str, *, steps: int = 8, micro: int = 2, accum: int = 2,
           save_steps: int = 2) -> Path:
    text = f"""
name: {name}
model: {{base: {model}, quantization: nf4}}
lora: {{r: 8, alpha: 16, dropout: 0.1}}
data:
  datasets: [{{path: {ROOT / "data" / "sora_en.jsonl"}, max_samples: 40}}]
  eval_split: 0.0
  max_length: 96
training: {{max_steps: {steps}, micro_batch_size: {micro}, gradient_accumulation_steps: {accum},
           learning_rate: 5.0e-3, warmup_steps: 1, logging_steps: 1, save_steps: {save_steps},
           save_total_limit: 2, gradient_checkpointing: false, seed: 7}}
output_dir: {tmp / name}
logs_dir: {tmp / "logs"}
"""
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    return path


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def adapter_tensors(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def start(cfg: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "nova", "train", "--config", str(cfg), "--no-preflight"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 300) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.communicate()[1][-2000:]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("timed out waiting for training")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The uninterrupted run, in a subprocess with the same settings as the interrupted one."""
    tmp = tmp_path_factory.mktemp("reference")
    proc = start(config(tmp, tiny_model_dir, "ref"))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    return tmp / "ref"


@pytest.mark.posix
def test_sigkill_then_resume_follows_the_same_trajectory(reference_run: Path, tiny_model_dir: Path,
                                                         tmp_path: Path) -> None:
    cfg = config(tmp_path, tiny_model_dir, "killed")
    run = tmp_path / "killed"
    proc = start(cfg)
    wait_for(lambda: (run / "checkpoints" / "sft" / "checkpoint-4" / SEAL).exists(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "COMPLETE").exists()
    resumed = start(cfg)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    assert "resuming from" in out
    ref, got = losses(reference_run), losses(run)
    assert sorted(got) == sorted(ref)
    for step in ref:
        assert got[step] == pytest.approx(ref[step], abs=1e-5), step
    a, b = adapter_tensors(reference_run), adapter_tensors(run)
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max() < 1e-5, key


@pytest.mark.posix
def test_sigterm_saves_a_checkpoint_and_the_run_resumes(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = config(tmp_path, tiny_model_dir, "stopped", steps=30, save_steps=100)
    run = tmp_path / "stopped"
    proc = start(cfg)
    wait_for(lambda: (run / "metrics.jsonl").exists() and 2 in losses(run), proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 3, err[-2000:]
    assert "to resume: nova train --config" in err and "Traceback" not in err
    checkpoint = latest_checkpoint(run / "checkpoints" / "sft")
    assert checkpoint is not None  # saved at the stop step although save_steps is 100
    stopped_at = int(checkpoint.name.split("-")[1])
    assert 2 <= stopped_at < 30
    config(tmp_path, tiny_model_dir, "stopped", steps=30, save_steps=4)  # a new save cadence for the rest
    resumed = start(cfg)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    assert f"step {stopped_at}" in out and (run / "COMPLETE").exists()
    # the resumed run saves at the config's cadence, not at the one in the checkpoint's trainer_state.json
    kept = sorted(int(c.name.split("-")[1]) for c in (run / "checkpoints" / "sft").glob("checkpoint-*"))
    assert kept and kept[-1] in (28, 30) and all(k % 4 == 0 or k == 30 for k in kept), kept


def test_simulated_oom_on_the_second_step_recovers_with_the_same_effective_batch(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch
    from transformers import TrainerCallback

    class OomOnce(TrainerCallback):
        fired = False

        def on_step_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if state.global_step == 1 and not OomOnce.fired:
                OomOnce.fired = True
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")

    cfg = config(tmp_path, tiny_model_dir, "oom", steps=4, save_steps=1)
    log = tmp_path / "log.txt"
    run_config(load_yaml_config(cfg), log=RunLog(log), extra_callbacks=[OomOnce()])
    run = tmp_path / "oom"
    assert OomOnce.fired and (run / "COMPLETE").exists()
    recovery = json.loads((run / "recoveries.jsonl").read_text().splitlines()[0])
    assert recovery["before"] == [2, 2, False] and recovery["after"] == [1, 4, True]
    assert "OOM at step 1: micro batch 2 -> 1, grad accumulation 2 -> 4" in log.read_text()
    done = json.loads((run / "stages" / "sft" / "DONE").read_text())
    assert done["settings"] == {"micro_batch_size": 1, "gradient_accumulation_steps": 4,
                                "gradient_checkpointing": True, "world_size": 1}
    assert done["steps"] == 4


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch
    from transformers import TrainerCallback

    from nova.train.machinery.resilience import NonFiniteLoss

    run = tmp_path / "nan"
    sealed: dict[str, bytes] = {}

    class PoisonAtStep3(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):  # type: ignore[no-untyped-def]
            if state.global_step == 2:
                ckpt = run / "checkpoints" / "sft" / "checkpoint-2" / "adapter_model.safetensors"
                sealed["bytes"] = ckpt.read_bytes()
                with torch.no_grad():
                    model.get_input_embeddings().weight.fill_(float("nan"))

    cfg = config(tmp_path, tiny_model_dir, "nan", steps=6, save_steps=1)
    with pytest.raises(NonFiniteLoss, match="step 3"):
        run_config(load_yaml_config(cfg), log=RunLog(tmp_path / "log.txt"), extra_callbacks=[PoisonAtStep3()])
    checkpoints = run / "checkpoints" / "sft"
    assert latest_checkpoint(checkpoints).name == "checkpoint-2"
    assert (checkpoints / "checkpoint-2" / "adapter_model.safetensors").read_bytes() == sealed["bytes"]
    assert not (run / "COMPLETE").exists()


def test_partial_and_corrupt_checkpoints_are_skipped_and_retention_keeps_the_newest(tmp_path: Path) -> None:
    stage = tmp_path / "sft"
    for step in (2, 4, 6, 8):
        ckpt = stage / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        for name in ("optimizer.pt", "scheduler.pt"):
            (ckpt / name).write_bytes(b"x")
        (ckpt / "trainer_state.json").write_text("{}")
        header = json.dumps({"__metadata__": {}}).encode()
        (ckpt / "adapter_model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
        (ckpt / SEAL).write_text("{}")
    (stage / "checkpoint-8" / SEAL).unlink()  # killed while saving
    (stage / "checkpoint-6" / "adapter_model.safetensors").write_bytes(b"\xff" * 20)  # corrupted
    said: list[str] = []
    assert latest_checkpoint(stage, said.append).name == "checkpoint-4"
    assert any("checkpoint-8" in s and "not sealed" in s for s in said)
    assert any("checkpoint-6" in s and "corrupted" in s for s in said)
    rotate(stage, keep=1)
    assert [p.name for p in stage.glob("checkpoint-*")] == ["checkpoint-4"]


def test_an_error_mid_training_saves_a_resumable_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import TrainerCallback

    class BreakAtStep3(TrainerCallback):
        armed = True

        def on_step_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if state.global_step == 3 and BreakAtStep3.armed:
                BreakAtStep3.armed = False
                raise RuntimeError("disk controller on fire (simulated)")

    cfg = config(tmp_path, tiny_model_dir, "err", steps=5, save_steps=100)
    log = tmp_path / "log.txt"
    with pytest.raises(RuntimeError, match="simulated"):
        run_config(load_yaml_config(cfg), log=RunLog(log), extra_callbacks=[BreakAtStep3()])
    run = tmp_path / "err"
    assert latest_checkpoint(run / "checkpoints" / "sft").name == "checkpoint-3"
    assert "saved checkpoint-3 so the run can resume" in log.read_text()
    run_config(load_yaml_config(cfg), log=RunLog(log))
    assert "resuming from" in log.read_text() and (run / "COMPLETE").exists()
