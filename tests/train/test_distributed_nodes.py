"""Two nodes for real: two ``nova train --nnodes 2`` launchers on loopback, one rank each.

Never aimed at any address but 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_distributed import assert_same_training, kill_run, write_config

pytestmark = pytest.mark.slow
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def node(cfg: Path, rank: int, port: int) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "nova", "train", "--config", str(cfg), "--no-preflight", "--nnodes",
                             "2", "--node-rank", str(rank), "--master-addr", LOOPBACK, "--master-port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


def both(cfg: Path, port: int) -> list[tuple[int, str, str]]:
    procs = [node(cfg, 0, port), node(cfg, 1, port)]
    outputs = [p.communicate(timeout=600) for p in procs]
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs, strict=True)]


def config(tmp: Path, model: Path, run: Path) -> Path:
    return write_config(tmp, model, run, micro_batch_size=2, gradient_accumulation_steps=1)


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("nodes")
    run = tmp / "nodes"
    for code, out, err in both(config(tmp, tiny_model_dir, run), free_port()):
        assert code == 0, err[-3000:]
        assert "training on 2 ranks (1 per node x 2 nodes, gloo, rendezvous 127.0.0.1:" in out
    return run


def test_two_nodes_train_what_one_process_trains_with_twice_the_accumulation(two_nodes: Path,
                                                                             one_process: Path) -> None:
    assert_same_training(one_process, two_nodes)


def test_a_dead_node_stops_the_survivor_in_seconds_and_the_same_commands_resume(
        two_nodes: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "nodes"
    cfg, port = config(tmp_path, tiny_model_dir, run), free_port()
    survivor, doomed = node(cfg, 0, port), node(cfg, 1, port)
    deadline = time.time() + 300
    while not (run / "checkpoints" / "sft" / "checkpoint-2" / "nova_checkpoint.json").exists():
        assert time.time() < deadline and survivor.poll() is None, survivor.communicate()[1][-3000:]
        time.sleep(0.05)
    kill_run(doomed)  # kill -9 node 1: its launcher, torchrun and rank
    killed = time.time()
    _, err = survivor.communicate(timeout=120)
    assert survivor.returncode != 0 and time.time() - killed < 60  # seconds, not a collective timeout
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "lost another rank of the run" in errors[0], err[-3000:]
    assert "Traceback" not in err and "ChildFailedError" not in err
    assert f"--nnodes 2 --node-rank 0 --master-addr 127.0.0.1 --master-port {port}" in errors[0]
    results = both(cfg, free_port())
    for code, _, err in results:
        assert code == 0, err[-3000:]
    assert "resuming from" in results[0][1]
    assert_same_training(two_nodes, run)
