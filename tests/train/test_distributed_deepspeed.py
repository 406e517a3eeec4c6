"""DeepSpeed ZeRO-2 and ZeRO-3 with LoRA for real on CPU ranks (DeepSpeed's CPU accelerator, gloo).

Needs the ``deepspeed`` extra (``pip install 'nova-tune[deepspeed]'``) and a C++ compiler; the
first run compiles DeepSpeed's shared-memory collective (minutes, then cached). LoRA leaves the
Trainer's no-decay parameter group empty and ZeRO drops it: the cosine schedule with warmup
stepping over that optimizer is the regression check for peers' crash at the first scheduler step
on torch >= 2.10."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_distributed import adapter, assert_same_training, nova_train, write_config

pytest.importorskip("deepspeed")
pytestmark = pytest.mark.slow
TRAINING = {"micro_batch_size": 2, "max_steps": 4, "lr_scheduler": "cosine", "warmup_steps": 1}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("ds-one")
    run = tmp / "one"
    done = nova_train(write_config(tmp, tiny_model_dir, run, gradient_accumulation_steps=2, **TRAINING))
    assert done.returncode == 0, done.stderr[-3000:]
    return run


@pytest.mark.parametrize("zero", [2, 3])
def test_zero_with_lora_on_two_cpu_ranks_trains_what_one_process_trains(
        one_process: Path, tiny_model_dir: Path, tmp_path: Path, zero: int) -> None:
    run = tmp_path / f"zero{zero}"
    done = nova_train(write_config(tmp_path, tiny_model_dir, run, gradient_accumulation_steps=1, **TRAINING),
                      "--nproc-per-node", "2", "--set", "distributed.strategy=deepspeed", "--set",
                      f"distributed.zero_stage={zero}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"engine: deepspeed ZeRO-{zero} over 2 ranks" in done.stdout
    assert (run / "checkpoints" / "sft" / "checkpoint-4" / "global_step4").is_dir()  # DeepSpeed's own state
    assert_same_training(one_process, run)
    assert {k: v.shape for k, v in adapter(run).items()} == {k: v.shape for k, v in adapter(one_process).items()}
