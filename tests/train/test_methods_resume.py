"""KTO, ORPO and SimPO survive kill -9: the resumed run follows the uninterrupted one step for step.

One phase runs the three as stages; it is killed in the middle of each stage in turn and resumed,
so every method resumes from its own checkpoint (after the stages before it were skipped as
done). KTO is the one with state beyond the adapter and optimizer: reference log-probs computed
before the first step and a fixed (seeded) data order whose neighbours form the KL pairs; ORPO and
SimPO run on the DPO data path with a random sampler whose state the checkpoint carries.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from method_fixtures import write_method_data
from nova.runs.checkpoints import SEAL

pytestmark = pytest.mark.trains  # whole runs: outside the development loop (README, "Development")

STEPS = 6


def config(tmp: Path, model: Path, name: str) -> Path:
    files = write_method_data(tmp)
    lengths = "max_prompt_length: 32, max_completion_length: 16"
    training = (f"{{max_steps: {STEPS}, micro_batch_size: 2, gradient_accumulation_steps: 2, learning_rate: 5.0e-3, "
                "warmup_steps: 1, logging_steps: 1, save_steps: 2, save_total_limit: 2, gradient_checkpointing: false, "
                "seed: 7}")
    data = "{{datasets: [{{path: {}}}], eval_split: 0.0, cache_dir: %s}}" % (tmp / "cache")
    text = f"""
name: {name}
model: {{base: {model}, quantization: nf4}}
lora: {{r: 8, alpha: 16, dropout: 0.1}}
stages:
  - method: kto
    data: {data.format(files["feedback"])}
    kto: {{beta: 0.1, {lengths}}}
    training: {training}
  - method: orpo
    data: {data.format(files["pairs"])}
    orpo: {{beta: 1.0, {lengths}}}
    training: {training}
  - method: simpo
    data: {data.format(files["pairs"])}
    simpo: {{beta: 2.0, gamma: 0.5, {lengths}}}
    training: {training}
output_dir: {tmp / name}
logs_dir: {tmp / "logs"}
"""
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    return path


def start(cfg: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "nova", "train", "--config", str(cfg), "--no-preflight"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    return out


def losses(run: Path) -> dict[tuple[str, int], float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {(r["stage"], r["step"]): r["loss"] for r in rows if "loss" in r}


def adapter(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def kill_at_checkpoint(proc: subprocess.Popen, checkpoint: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not (checkpoint / SEAL).exists():
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.communicate()[1][-2000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the checkpoint")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.posix
def test_sigkill_in_each_stage_then_resume_follows_the_same_trajectory(tiny_model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "ref").mkdir()
    reference = start(config(tmp_path / "ref", tiny_model_dir, "run"))  # uninterrupted, alongside
    (tmp_path / "killed").mkdir()
    cfg = config(tmp_path / "killed", tiny_model_dir, "run")
    run = tmp_path / "killed" / "run"
    proc = start(cfg)
    for method in ("kto", "orpo", "simpo"):
        kill_at_checkpoint(proc, run / "checkpoints" / method / "checkpoint-4")
        assert not (run / "COMPLETE").exists()
        proc = start(cfg)
    out = finish(proc)
    assert "resuming from" in out and "[run/orpo] already done" in out
    finish(reference)
    ref, got = losses(tmp_path / "ref" / "run"), losses(run)
    assert sorted(got) == sorted(ref) == [(m, s) for m in ("kto", "orpo", "simpo") for s in range(1, STEPS + 1)]
    for key in ref:
        assert got[key] == pytest.approx(ref[key], abs=1e-5), key
    a, b = adapter(tmp_path / "ref" / "run"), adapter(run)
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max() < 1e-5, key
