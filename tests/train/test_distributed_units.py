"""The small pieces of scale-out that need no second process: a dead peer's message, what a rank
hands its launcher, the engine check, the whole adapter, FSDP's checkpoint files."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from nova.errors import NovaError
from nova.train.launch import RESULT_ENV, Launch, report_to_launcher
from nova.train.machinery.distributed import Ranks, peer_lost
from nova.train.machinery.strategy import Strategy, check_engine, whole_trainable

GLOO_RESET = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
              "[127.0.0.1]:35234: Connection reset by peer. This is typically caused by a remote worker hanging")


def test_a_dead_peer_becomes_one_line_with_the_command_that_resumes() -> None:
    lost = peer_lost(RuntimeError(GLOO_RESET), Ranks(2, 0, 0), "nova train --config c.yaml --nnodes 2")
    assert lost is not None
    assert lost.message == ("rank 0 lost another rank of the run (Read error [127.0.0.1]:35234: Connection reset "
                            "by peer): a process or node died or was killed; this node stopped")
    assert lost.hint == "to resume: nova train --config c.yaml --nnodes 2"


def test_other_errors_and_one_process_are_not_a_dead_peer() -> None:
    assert peer_lost(RuntimeError("shape mismatch"), Ranks(2, 0, 0), "x") is None
    assert peer_lost(RuntimeError(GLOO_RESET), Ranks(), "x") is None
    assert peer_lost(NovaError("connection reset by peer in a data file"), Ranks(2, 1, 0), "x") is None


@pytest.mark.parametrize(("nodes", "local", "code", "writes"), [
    ("1", "0", 0, True),  # one node: the parent reports; the rank leaves quietly with 0
    ("2", "0", 2, True),  # several: the error's own code, or torchrun waits at its exit barrier
    ("2", "1", 2, False),  # only each node's local rank 0 writes for its launcher
])
def test_a_rank_hands_its_error_to_its_own_nodes_launcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          nodes: str, local: str, code: int, writes: bool) -> None:
    result = tmp_path / "result.json"
    monkeypatch.setenv(RESULT_ENV, str(result))
    monkeypatch.setenv("GROUP_WORLD_SIZE", nodes)
    monkeypatch.setenv("LOCAL_RANK", local)
    monkeypatch.setenv("RANK", "1")  # node 1's rank: the old rule (global rank 0 only) left it silent
    assert report_to_launcher(2, ["boom"]) == code
    assert result.exists() == writes
    if writes:
        assert json.loads(result.read_text()) == {"code": 2, "lines": ["boom"]}


def test_no_launcher_no_report(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RESULT_ENV, raising=False)
    assert report_to_launcher(1, ["x"]) is None


def test_the_launch_flags_resume_on_every_node() -> None:
    assert Launch(2).flags() == ["--nproc-per-node", "2"]
    assert Launch(1, 2, 1, "127.0.0.1", 29611).flags() == [
        "--nproc-per-node", "1", "--nnodes", "2", "--node-rank", "1", "--master-addr", "127.0.0.1", "--master-port",
        "29611"]


@pytest.mark.parametrize(("name", "trainer", "refused"), [
    ("fsdp", {"is_fsdp_enabled": False, "is_deepspeed_enabled": False}, "the trainer set up ddp"),
    ("deepspeed", {"is_fsdp_enabled": False, "is_deepspeed_enabled": False}, "the trainer set up ddp"),
    ("fsdp", {"is_fsdp_enabled": True, "is_deepspeed_enabled": False}, None),
    ("ddp", {"is_fsdp_enabled": False, "is_deepspeed_enabled": False}, None),
])
def test_a_trainer_under_another_engine_than_configured_is_refused(name: str, trainer: dict[str, bool],
                                                                   refused: str | None) -> None:
    if refused is None:
        check_engine(SimpleNamespace(**trainer), Strategy(name, {}))
        return
    with pytest.raises(NovaError, match=refused):
        check_engine(SimpleNamespace(**trainer), Strategy(name, {}))


def test_unsharded_weights_are_saved_by_the_model_itself() -> None:
    import torch

    assert whole_trainable(torch.nn.Linear(2, 2)) is None


def test_an_fsdp_checkpoint_with_its_optimizer_bin_is_complete(tmp_path: Path) -> None:
    from nova.runs.checkpoints import checkpoint_problem, seal

    path = tmp_path / "checkpoint-2"
    path.mkdir()
    header = json.dumps({"__metadata__": {}}).encode()
    (path / "adapter_model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    for name in ("optimizer.bin", "pytorch_model_fsdp.bin", "scheduler.pt"):
        (path / name).write_bytes(b"x")
    (path / "trainer_state.json").write_text("{}")
    seal(path, 2, None, world_size=2)
    assert checkpoint_problem(path) is None
    (path / "optimizer.bin").unlink()
    seal(path, 2, None, world_size=2)
    assert checkpoint_problem(path) == "missing optimizer.pt"


class SlowStore:
    """A store whose key appears after ``ready_after`` checks (rank 0 tokenizing)."""

    def __init__(self, ready_after: int) -> None:
        self.checks, self.ready_after = 0, ready_after

    def check(self, keys: list[str]) -> bool:
        self.checks += 1
        return self.checks > self.ready_after


def test_the_other_ranks_wait_for_the_data_with_progress_and_no_collective_timeout() -> None:
    from nova.train.machinery.distributed import wait_for_key

    said: list[str] = []
    store = SlowStore(ready_after=40)
    waited = wait_for_key(store, "k", Ranks(4, 2, 0), say=said.append, poll_s=0.005, report_s=0.05)
    assert store.checks == 41 and waited >= 40 * 0.005
    assert said and all(line.startswith("[rank 2] waiting for rank 0 to prepare the data") for line in said)
    quiet: list[str] = []  # a second rank of a node: its node's first rank speaks for it
    wait_for_key(SlowStore(ready_after=20), "k", Ranks(4, 3, 1), say=quiet.append, poll_s=0.005, report_s=0.01)
    assert quiet == []


def test_deepspeed_on_cpu_ranks_without_a_compiler_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from nova.config.schema import DistributedConfig, ModelConfig, StageConfig
    from nova.train.machinery import strategy

    monkeypatch.setattr(strategy.importlib.util, "find_spec", lambda name: object())  # as if installed
    model, stage = ModelConfig(base="m", quantization="none"), StageConfig.model_validate({})
    cfg = DistributedConfig(strategy="deepspeed")
    assert strategy.strategy_for(cfg, 2, model, stage, cuda=False, bf16=False, fp16=False).name == "deepspeed"
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(NovaError, match=r"no C\+\+ compiler was found"):
        strategy.strategy_for(cfg, 2, model, stage, cuda=False, bf16=False, fp16=False)
    assert strategy.strategy_for(cfg, 2, model, stage, cuda=True, bf16=True, fp16=False).name == "deepspeed"
