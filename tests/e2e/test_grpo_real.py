"""GRPO on the real SmolLM2-135M-Instruct with the shipped arithmetic prompts (data/arithmetic.jsonl).

Four steps of one prompt x 4 answers, at most 12 tokens each, plain LoRA in fp32 (the fast path on a
CPU): the real chat template, real generation and the built-in rewards on real answers. nova feeds
TRL its own prompt tokens, so the test also checks they are exactly what the tokenizer's
apply_chat_template gives with the generation prompt (what TRL would have built). Four steps say
nothing about learning arithmetic, so no claim is made about the reward's direction. Slow: 3.5 minutes
on 2 cores that another training run was using too (generation dominates); less on idle cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ROOT
from nova.config import load_yaml_config
from nova.console import RunLog
from nova.train.pipeline import run_config

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
STEPS = 4


@pytest.fixture(scope="module")
def real_grpo(tmp_path_factory: pytest.TempPathFactory, real_model_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("real-grpo")
    text = f"""
name: arithmetic
model: {{base: {real_model_dir}, quantization: none}}
lora: {{r: 16, alpha: 32, dropout: 0.0}}
method: grpo
data: {{datasets: [{{path: {ROOT / "data" / "arithmetic.jsonl"}, max_samples: 4}}], eval_split: 0.0,
       cache_dir: {tmp / "cache"}}}
grpo:
  num_generations: 4
  max_prompt_length: 128
  max_completion_length: 12
  rewards:
    - {{name: exact_match, field: answer}}
    - {{name: regex, pattern: "^\\\\s*-?\\\\d+\\\\s*$", weight: 0.5}}
training: {{max_steps: {STEPS}, micro_batch_size: 4, gradient_accumulation_steps: 1, learning_rate: 1.0e-5,
           lr_scheduler: constant, warmup_steps: 0, logging_steps: 1, save_steps: 100, gradient_checkpointing: false}}
output_dir: {tmp / "run"}
logs_dir: {tmp / "logs"}
"""
    config = tmp / "grpo.yaml"
    config.write_text(text)
    run_config(load_yaml_config(config), log=RunLog(tmp / "log.txt"))
    return tmp / "run"


def test_grpo_runs_on_the_real_model_with_its_rewards_logged(real_grpo: Path) -> None:
    assert (real_grpo / "COMPLETE").exists()
    rows = [json.loads(x) for x in (real_grpo / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    for r in train:
        assert 0.0 <= r["rewards/exact_match/mean"] <= 1.0 and 0.0 <= r["rewards/regex/mean"] <= 1.0
        assert 0 < r["completions/mean_length"] <= 12
        assert r["reward"] == pytest.approx(r["rewards/exact_match/mean"] + 0.5 * r["rewards/regex/mean"], abs=1e-5)


def test_nova_prompt_tokens_are_the_templates_generation_prompt(real_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from nova.config.schema import DataConfig
    from nova.data import prepare_stage_data
    from nova.methods.grpo import GRPOConfig, RewardSpec

    tok = AutoTokenizer.from_pretrained(str(real_model_dir))
    data = DataConfig(datasets=[{"path": str(ROOT / "data" / "arithmetic.jsonl"), "max_samples": 5}],
                      eval_split=0.0, cache_dir=str(tmp_path / "cache"))
    grpo = GRPOConfig(rewards=[RewardSpec(name="exact_match")])
    prepared = prepare_stage_data(data, tok, method="grpo", seed=0, dpo=grpo)
    for row in prepared.train:
        messages = json.loads(row["record"])["prompt"]
        expected = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        assert row["prompt_ids"] == list(expected["input_ids"])
