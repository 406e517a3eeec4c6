"""KTO and SimPO on the real SmolLM2-135M-Instruct with the shipped data sets (one combined run).

One phase, two stages: KTO on LLaMA-Factory's thumbs-up/thumbs-down demo (data/kto_en.jsonl),
then SimPO on real preference pairs (data/sora_dpo.jsonl), plain LoRA in fp32 (the fast path on
a CPU). Each stage's training set is one effective batch (four records), so every step sees the
same records and the training loss must fall (three steps: KTO's loss halves, SimPO's margin grows
sevenfold); KTO's held-out records give its step-0 check on a real model and template (policy
equals reference). SimPO keeps no holdout: nothing here reads its evaluation. A few held-out
records after three steps say little about generalization, so no claim is made about them. Slow:
a few minutes on 2 idle cores, far longer on a loaded machine.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import ROOT
from nova.config import load_yaml_config
from nova.console import RunLog
from nova.train.pipeline import run_config

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def real_methods(tmp_path_factory: pytest.TempPathFactory, real_model_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("real-methods")
    training = ("{max_steps: 3, micro_batch_size: 2, gradient_accumulation_steps: 2, learning_rate: 5.0e-4, "
                "warmup_steps: 0, logging_steps: 1, eval_steps: 3, save_steps: 100, gradient_checkpointing: false}")
    lengths = "max_prompt_length: 48, max_completion_length: 32"
    text = f"""
name: feedback
model: {{base: {real_model_dir}, quantization: none}}
lora: {{r: 16, alpha: 32, dropout: 0.0}}
output_dir: {tmp / "run"}
logs_dir: {tmp / "logs"}
stages:
  - method: kto
    data: {{datasets: [{{path: {ROOT / "data" / "kto_en.jsonl"}, max_samples: 6}}], eval_split: 0.34}}
    kto: {{beta: 0.1, {lengths}}}
    training: {training}
  - method: simpo
    data: {{datasets: [{{path: {ROOT / "data" / "sora_dpo.jsonl"}, max_samples: 4}}], eval_split: 0.0}}
    simpo: {{beta: 2.0, gamma: 1.0, {lengths}}}
    training: {training}
"""
    config = tmp / "feedback.yaml"
    config.write_text(text)
    run_config(load_yaml_config(config), log=RunLog(tmp / "log.txt"))
    return tmp / "run"


def _rows(run: Path, stage: str, key: str) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["stage"] == stage and key in r]


def test_kto_on_real_feedback_starts_at_the_reference_and_fits_its_batch(real_methods: Path) -> None:
    start = _rows(real_methods, "kto", "eval_loss")[0]
    assert start["step"] == 0 and math.isclose(start["eval_loss"], 0.5, abs_tol=1e-3)
    # a micro batch logs the rewards of the kinds it holds (desirable, undesirable or both)
    zeros = [start[k] for k in ("eval_rewards/chosen", "eval_rewards/rejected", "eval_kl") if k in start]
    assert len(zeros) >= 2 and all(abs(z) < 1e-3 for z in zeros)
    train = _rows(real_methods, "kto", "loss")
    assert [r["step"] for r in train] == list(range(1, 4))
    assert train[-1]["loss"] < train[0]["loss"] - 0.05
    good = [r["rewards/chosen"] for r in train if "rewards/chosen" in r]
    assert len(good) >= 2 and good[-1] > good[0]  # the desirable replies became more likely


def test_simpo_on_real_pairs_fits_its_batch(real_methods: Path) -> None:
    train = _rows(real_methods, "simpo", "loss")
    assert [r["step"] for r in train] == list(range(1, 4))
    assert train[-1]["loss"] < train[0]["loss"] - 0.05
    assert train[-1]["rewards/margins"] > train[0]["rewards/margins"]
    assert (real_methods / "COMPLETE").exists()
