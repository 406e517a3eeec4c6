"""Preflight for several ranks: memory per rank for the strategy that would run, and enough GPUs."""

from __future__ import annotations

from pathlib import Path

from preflight_support import cuda_env, loaded

from nova.preflight import run_preflight


def _memory(report) -> tuple[str, int]:  # type: ignore[no-untyped-def]
    check = next(c for c in report.checks if c.name == "memory")
    return check.message, report.estimate["total_bytes"]


def test_two_ranks_estimate_a_ddp_replica_per_gpu(tmp_path: Path) -> None:
    cfg = loaded(tmp_path)
    one = run_preflight(cfg, gpu_memory="24GiB", gpus=2, env=cuda_env(), check_data=False)
    two = run_preflight(cfg, gpu_memory="24GiB", gpus=2, env=cuda_env(), check_data=False, ranks=2)
    message, per_rank = _memory(two)
    assert message.startswith("per rank, ddp over 2 ranks")
    assert per_rank > _memory(one)[1]  # DDP's gradient buckets come on top of the replica
    assert any(c.name == "distributed" and c.status == "pass" for c in two.checks)


def test_fsdp_shards_what_does_not_fit_and_auto_picks_it(tmp_path: Path) -> None:
    cfg = loaded(tmp_path)
    ddp = run_preflight(cfg, gpu_memory="8GiB", gpus=4, env=cuda_env(), check_data=False, ranks=4)
    assert _memory(ddp)[0].startswith("per rank, fsdp over 4 ranks")  # auto: a replica does not fit 8 GiB
    forced = run_preflight(loaded(tmp_path, ), gpu_memory="80GiB", gpus=4, env=cuda_env(), check_data=False, ranks=4)
    assert _memory(forced)[0].startswith("per rank, ddp over 4 ranks")
    assert _memory(ddp)[1] < _memory(forced)[1]


def test_more_ranks_than_gpus_fails(tmp_path: Path) -> None:
    report = run_preflight(loaded(tmp_path), gpu_memory="24GiB", gpus=2, env=cuda_env(), check_data=False, ranks=4)
    check = next(c for c in report.checks if c.name == "distributed")
    assert check.status == "fail" and "--nproc-per-node 2" in check.fix
