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
def one_process(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("ds-one")
    run = tmp / "one"
    done = nova_train(chain(tmp, tiny_model_dir, run, ["sft", "dpo"], accumulation=2))
    assert done.returncode == 0, done.stderr[-3000:]
    return run


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_sft_then_dpo_under_zero_on_two_cpu_ranks_train_what_one_process_trains(
        one_process: Path, tiny_model_dir: Path, tmp_path: Path, zero_stage: int) -> None:
    import torch

    run = tmp_path / f"zero{zero_stage}"
    done = nova_train(chain(tmp_path, tiny_model_dir, run, ["sft", "dpo"]), *zero(zero_stage))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count(f"engine: deepspeed ZeRO-{zero_stage} over 2 ranks") == 2  # one engine per stage
    assert (run / "checkpoints" / "dpo" / "checkpoint-3" / "global_step3").is_dir()  # DeepSpeed's own state
    ours, theirs = rows(run), rows(one_process)
    steps = [(r["stage"], r["step"]) for r in theirs if "loss" in r]
    assert steps == [(s, i) for s in ("sft", "dpo") for i in (1, 2, 3)]
    assert [(r["stage"], r["step"]) for r in ours if "loss" in r] == steps
    for a, b in zip((r for r in ours if "loss" in r), (r for r in theirs if "loss" in r), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3), (a["stage"], a["step"])
    assert [r["loss"] for r in ours if r.get("stage") == "dpo" and "loss" in r][-1] < math.log(2) - 0.01  # it learned
    for where in ("sft", "dpo", None):  # every stage's adapter whole (full shapes, same values)
        single, sharded = adapter(one_process, where), adapter(run, where)
        assert sharded.keys() == single.keys()
        for key, value in single.items():
            torch.testing.assert_close(sharded[key], value, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_every_method_builds_and_steps_its_schedule_under_zero(tiny_model_dir: Path, tmp_path: Path,
                                                               zero_stage: int) -> None:
    """KTO, ORPO, SimPO and GRPO chained in one phase (SFT and DPO: the test above), each through nova's
    trainer builder, two steps of a cosine schedule with warmup over ZeRO's optimizer."""
    methods = ["kto", "orpo", "simpo", "grpo"]
    run = tmp_path / "all"
    done = nova_train(chain(tmp_path, tiny_model_dir, run, methods, steps=2), *zero(zero_stage))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count(f"engine: deepspeed ZeRO-{zero_stage} over 2 ranks") == len(methods)
    logged = [r for r in rows(run) if "loss" in r]
    assert [(r["stage"], r["step"]) for r in logged] == [(m, i) for m in methods for i in (1, 2)]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in logged)
    assert all(r["learning_rate"] > 0 for r in logged if r["step"] == 2)  # the scheduler stepped past warmup
    for method in methods:
        assert json.loads((run / "stages" / method / "DONE").read_text())["steps"] == 2
        shapes = {tuple(v.shape) for v in adapter(run, method).values()}
        assert all(0 not in shape and 16 in shape for shape in shapes), (method, shapes)
