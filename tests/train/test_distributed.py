"""Several ranks on CPU (gloo, through torchrun): the same training as one process, and the fault cases."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import ROOT

pytestmark = pytest.mark.slow


def write_config(tmp: Path, model: Path, run: Path, *, quantization: str = "none", **training: Any) -> Path:
    cfg = {"name": "d", "model": {"base": str(model), "quantization": quantization},
           "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
           "data": {"datasets": [{"path": str(ROOT / "data" / "sora_en.jsonl"), "max_samples": 100}],
                    "eval_split": 0.0, "max_length": 192},
           "training": {"max_steps": 10, "learning_rate": 5e-3, "lr_scheduler": "constant", "warmup_steps": 0,
                        "logging_steps": 1, "save_steps": 2, "gradient_checkpointing": False, "seed": 11,
                        **training},
           "output_dir": str(run), "logs_dir": str(tmp / "logs")}
    path = tmp / f"{run.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def nova_train(cfg: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "nova", "train", "--config", str(cfg), "--no-preflight", *extra],
                          capture_output=True, text=True, timeout=timeout, env=env)


def start(cfg: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "nova", "train", "--config", str(cfg), "--no-preflight", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def adapter(run: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def assert_same_training(a: Path, b: Path, *, rel: float = 1e-3) -> None:
    import torch

    la, lb = losses(a), losses(b)
    assert sorted(la) == sorted(lb)
    for step in la:
        assert lb[step] == pytest.approx(la[step], rel=rel), step
    ta, tb = adapter(a), adapter(b)
    for key in ta:
        torch.testing.assert_close(ta[key], tb[key], rtol=1e-3, atol=1e-5)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("ddp")
    run = tmp / "two"
    done = nova_train(write_config(tmp, tiny_model_dir, run, micro_batch_size=2, gradient_accumulation_steps=1),
                      "--nproc-per-node", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "training on 2 ranks" in done.stdout
    return run


def test_two_ranks_train_what_one_process_trains_with_twice_the_accumulation(two_ranks: Path,
                                                                             one_process: Path) -> None:
    assert_same_training(one_process, two_ranks)
    rows = [json.loads(line) for line in (two_ranks / "metrics.jsonl").read_text().splitlines()]
    assert all(len(r["memory_per_rank"]) == 2 for r in rows if "memory_per_rank" in r) and rows
    done_record = json.loads((two_ranks / "stages" / "sft" / "DONE").read_text())
    assert done_record["settings"]["world_size"] == 2


def test_kill_and_resume_on_two_ranks_follows_the_same_trajectory(two_ranks: Path, tiny_model_dir: Path,
                                                                  tmp_path: Path) -> None:
    run = tmp_path / "two"
    cfg = write_config(tmp_path, tiny_model_dir, run, micro_batch_size=2, gradient_accumulation_steps=1)
    proc = start(cfg, "--nproc-per-node", "2")
    deadline = time.time() + 300
    while not (run / "checkpoints" / "sft" / "checkpoint-4" / "nova_checkpoint.json").exists():
        assert time.time() < deadline and proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    kill_run(proc)
    resumed = nova_train(cfg, "--nproc-per-node", "2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    assert_same_training(two_ranks, run)


def kill_run(proc: subprocess.Popen[str]) -> None:
    """kill -9 the whole run: every rank (torchrun starts them in sessions of their own), then the rest."""
    for pid in _descendants(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _worker_pids(root: int) -> list[int]:
    """The ranks below ``root``: Python processes running nova train, not torchrun itself (nova.train.torchrun)."""
    found = []
    for pid in _descendants(root):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"nova" in cmd and b"torch.distributed.run" not in cmd and b"nova.train.torchrun" not in cmd:
            found.append(pid)
    return found


def test_a_killed_rank_ends_the_run_with_one_message_and_it_resumes_on_one_rank_with_the_same_batch(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "two"
    cfg = write_config(tmp_path, tiny_model_dir, run, micro_batch_size=2, gradient_accumulation_steps=1)
    proc = start(cfg, "--nproc-per-node", "2")
    deadline = time.time() + 300
    while not (run / "checkpoints" / "sft" / "checkpoint-2" / "nova_checkpoint.json").exists():
        assert time.time() < deadline and proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    ranks = _worker_pids(proc.pid)
    assert len(ranks) == 2, ranks
    os.kill(ranks[-1], signal.SIGKILL)  # one rank, mid-training (8 steps to go)
    started = time.time()
    _, err = proc.communicate(timeout=240)
    assert proc.returncode != 0 and time.time() - started < 240
    # torchrun's report of the dead rank, or the survivor's own (its collective lost the peer): one line
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err[-3000:]
    assert "a rank of the run failed or was killed" in errors[0] or "lost another rank of the run" in errors[0]
    assert "to resume: nova train" in errors[0] and "--nproc-per-node 2" in errors[0]
    assert "Traceback" not in err
    resumed = nova_train(cfg)  # the 2-rank run resumed in one process
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "gradient_accumulation_steps 1 -> 2 keeps the effective batch 4" in resumed.stdout
    settings = json.loads((run / "stages" / "sft" / "DONE").read_text())["settings"]
    assert settings["gradient_accumulation_steps"] == 2 and settings["world_size"] == 1
