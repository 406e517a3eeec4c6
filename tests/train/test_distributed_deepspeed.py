"""DeepSpeed ZeRO-2 and ZeRO-3 with LoRA for real on CPU ranks (DeepSpeed's CPU accelerator, gloo).

Needs the ``deepspeed`` extra (``pip install 'nova-tune[deepspeed]'``) and a C++ compiler; the
first run compiles DeepSpeed's shared-memory collective (minutes, then cached). LoRA leaves the
Trainer's no-decay parameter group empty and ZeRO drops it: every method's trainer, built by nova's
builders and stepping a cosine schedule with warmup over that optimizer, is the regression check
for peers' crash at the first scheduler step on torch >= 2.10.

LoRA r 16 on the tiny model (hidden 64) puts every adapter tensor above ZeRO-3's persistence
threshold (10 x hidden): they are partitioned, as they are on real models, so a stage saved from
rank 0's own copy would be empty. The stages are chained (SFT then DPO, and every other method in
one phase) because a later stage builds its engine on the model an earlier engine hooked."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_distributed import nova_train

from conftest import ROOT
from method_fixtures import write_method_data

pytest.importorskip("deepspeed")
pytestmark = pytest.mark.slow
LENGTHS = {"max_prompt_length": 32, "max_completion_length": 16}
OTHERS = ["kto", "orpo", "simpo", "grpo"]  # SFT and DPO: compared with one process
DATA = {"sft": "sft", "dpo": "pairs", "orpo": "pairs", "simpo": "pairs", "kto": "feedback"}


def stage(method: str, files: dict[str, Path], accumulation: int, steps: int) -> dict[str, Any]:
    path = ROOT / "data" / "arithmetic.jsonl" if method == "grpo" else files[DATA[method]]
    out: dict[str, Any] = {
        "method": method, "data": {"datasets": [{"path": str(path)}], "eval_split": 0.0, "max_length": 64},
        "training": {"max_steps": steps, "micro_batch_size": 4 if method == "grpo" else 2,
                     "gradient_accumulation_steps": accumulation, "learning_rate": 5e-3, "lr_scheduler": "cosine",
                     "warmup_steps": 1, "logging_steps": 1, "save_steps": steps, "seed": 11,
                     "gradient_checkpointing": False}}
    if method in ("dpo", "kto", "orpo", "simpo"):
        out[method] = dict(LENGTHS)
    if method == "grpo":
        out[method] = {"num_generations": 4, "max_prompt_length": 64, "max_completion_length": 8,
                       "temperature": 0.1, "beta": 0.1, "rewards": [{"name": "regex", "pattern": "[0-9]"}]}
    return out


def chain(tmp: Path, model: Path, run: Path, methods: list[str], *, accumulation: int = 1, steps: int = 3) -> Path:
    files = write_method_data(tmp)
    cfg = {"name": "d", "model": {"base": str(model), "quantization": "none"},
           "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
           "stages": [stage(m, files, accumulation, steps) for m in methods],
           "output_dir": str(run), "logs_dir": str(tmp / "logs")}
    path = tmp / f"{run.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def zero(stage_: int) -> tuple[str, ...]:
    return ("--nproc-per-node", "2", "--set", "distributed.strategy=deepspeed", "--set",
            f"distributed.zero_stage={stage_}")


def rows(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def adapter(run: Path, stage_: str | None = None) -> dict[str, Any]:
    from safetensors.torch import load_file

    where = run / "adapter" if stage_ is None else run / "stages" / stage_ / "adapter"
    return load_file(str(where / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def one_process_chain(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("ds-one")
    run = tmp / "one"
    done = nova_train(chain(tmp, tiny_model_dir, run, ["sft", "dpo"], accumulation=2))
    assert done.returncode == 0, done.stderr[-3000:]
    return run


@pytest.fixture(scope="module", params=[2, 3], ids=["zero2", "zero3"])
def zero_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
             tiny_model_dir: Path) -> tuple[int, Path, str]:
    """One 2-rank run per ZeRO stage: SFT then DPO (compared with one process), then every other method."""
    tmp = tmp_path_factory.mktemp(f"zero{request.param}")
    run = tmp / "zero"
    done = nova_train(chain(tmp, tiny_model_dir, run, ["sft", "dpo", *OTHERS]), *zero(request.param))
    assert done.returncode == 0, done.stderr[-3000:]
    return request.param, run, done.stdout


def test_sft_then_dpo_under_zero_on_two_cpu_ranks_train_what_one_process_trains(
        one_process_chain: Path, zero_run: tuple[int, Path, str]) -> None:
    import torch

    zero_stage, run, said = zero_run
    assert said.count(f"engine: deepspeed ZeRO-{zero_stage} over 2 ranks") == 2 + len(OTHERS)  # one per stage
    assert (run / "checkpoints" / "dpo" / "checkpoint-3" / "global_step3").is_dir()  # DeepSpeed's own state
    theirs = [r for r in rows(one_process_chain) if "loss" in r]
    ours = [r for r in rows(run) if "loss" in r and r["stage"] in ("sft", "dpo")]
    steps = [(s, i) for s in ("sft", "dpo") for i in (1, 2, 3)]
    assert [(r["stage"], r["step"]) for r in theirs] == [(r["stage"], r["step"]) for r in ours] == steps
    for a, b in zip(ours, theirs, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3), (a["stage"], a["step"])
    assert ours[-1]["loss"] < math.log(2) - 0.01  # DPO learned (its first steps sit at log 2)
    for where in ("sft", "dpo"):  # each stage's adapter whole (full shapes, same values)
        single, sharded = adapter(one_process_chain, where), adapter(run, where)
        assert sharded.keys() == single.keys()
        for key, value in single.items():
            torch.testing.assert_close(sharded[key], value, rtol=1e-3, atol=1e-5)


def test_every_method_builds_and_steps_its_schedule_under_zero(zero_run: tuple[int, Path, str]) -> None:
    """KTO, ORPO, SimPO and GRPO chained after SFT and DPO, each through nova's trainer builder, three
    steps of a cosine schedule with warmup over ZeRO's optimizer (its empty no-decay group dropped)."""
    _, run, _ = zero_run
    logged = [r for r in rows(run) if "loss" in r and r["stage"] in OTHERS]
    assert [(r["stage"], r["step"]) for r in logged] == [(m, i) for m in OTHERS for i in (1, 2, 3)]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in logged)
    assert all(r["learning_rate"] > 0 for r in logged if r["step"] > 1)  # the scheduler stepped past warmup
    for method in OTHERS:
        assert json.loads((run / "stages" / method / "DONE").read_text())["steps"] == 3
        shapes = {tuple(v.shape) for v in adapter(run, method).values()}
        assert all(0 not in shape and 16 in shape for shape in shapes), (method, shapes)
    assert (run / "adapter" / "adapter_model.safetensors").exists()
