"""GRPO on the tiny model: an SFT phase, then a phase whose SFT stage is followed by GRPO on data/arithmetic.jsonl.

One pipeline checks that GRPO trains end to end with its reward rising (metrics.jsonl), that its KL
reference is the stage's true starting point (the chained phase plus this phase's adapter after its SFT
stage: at the first step the policy equals it, KL 0; TRL's own reference, the adapters switched off,
would not), that the metrics reach ``nova status`` without false alarms, and that merge and export take
its adapter like any other.

The tiny random model's logits are nearly flat (embeddings of std 0.02: every logit within about +-1),
so at temperature 1 no adapter can move its samples far; at temperature 0.1 the same adapter changes
can. The reward it learns is a regex (the reply holds a digit); exact_match is recorded beside it (a
random model never gets a sum right). The real model runs in tests/e2e/test_grpo_real.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import ROOT, run_nova
from method_fixtures import write_method_data
from nova.config import load_yaml_config
from nova.console import RunLog
from nova.train.pipeline import run_config

pytestmark = pytest.mark.trains  # whole runs: outside the development loop (README, "Development")

SFT_TRAIN = ("{max_steps: %d, micro_batch_size: 4, gradient_accumulation_steps: 1, learning_rate: 1.0e-2, "
             "warmup_steps: 0, logging_steps: 1, save_steps: 100, gradient_checkpointing: false}")
GRPO_STEPS = 8
GRPO_STAGE = f"""
      - method: grpo
        data: {{datasets: [{{path: {ROOT / "data" / "arithmetic.jsonl"}}}], eval_split: 0.1, cache_dir: %(cache)s}}
        grpo:
          num_generations: 4
          max_prompt_length: 64
          max_completion_length: 8
          temperature: 0.1
          beta: 0.1
          rewards:
            - {{name: regex, pattern: "[0-9]"}}
            - {{name: exact_match, field: answer}}
        training: {{max_steps: {GRPO_STEPS}, micro_batch_size: 8, gradient_accumulation_steps: 1,
                   learning_rate: 5.0e-2, lr_scheduler: constant, warmup_steps: 0, logging_steps: 1, eval_steps: 4,
                   save_steps: 100, gradient_checkpointing: false}}
"""


def pipeline_yaml(tmp: Path, model: Path) -> Path:
    files = write_method_data(tmp)
    sft_data = f"{{datasets: [{{path: {files['sft']}}}], eval_split: 0.0, max_length: 64, cache_dir: {tmp / 'cache'}}}"
    text = f"""
output_dir: {tmp / "out"}
phases:
  - name: chat
    model: {{base: {model}, quantization: none}}
    lora: {{dropout: 0.0}}
    data: {sft_data}
    training: {SFT_TRAIN % 3}
    logs_dir: {tmp / "logs"}
  - name: rl
    start_from: chat
    lora: {{dropout: 0.0}}
    logs_dir: {tmp / "logs"}
    stages:
      - method: sft
        data: {sft_data}
        training: {SFT_TRAIN % 2}
{GRPO_STAGE % {"cache": tmp / "cache"}}"""
    path = tmp / "pipeline.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def rl(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("grpo")
    run_config(load_yaml_config(pipeline_yaml(tmp, tiny_model_dir)), log=RunLog(tmp / "log.txt"))
    return tmp / "out" / "rl"


def rows(run: Path, key: str) -> list[dict]:
    found = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in found if r["stage"] == "grpo" and key in r]


def test_grpo_finishes_as_a_stage_with_its_adapter_and_fingerprint(rl: Path) -> None:
    assert (rl / "COMPLETE").exists()
    done = json.loads((rl / "stages" / "grpo" / "DONE").read_text())
    assert done["method"] == "grpo" and done["steps"] == GRPO_STEPS
    values = done["fingerprint"]["values"]
    assert values["grpo.beta"] == 0.1 and values["grpo.temperature"] == 0.1 and "kto.beta" not in values
    assert (rl / "stages" / "grpo" / "adapter" / "adapter_model.safetensors").exists()
    report = json.loads((rl / "stages" / "grpo" / "data_report.json").read_text())
    assert (report["read"], report["train_records"] + report["eval_records"]) == (64, 64)
    from nova.runs.record import read_run

    recorded = read_run(rl).phase  # config.yaml reads back with the grpo section and its rewards
    assert [s.method for s in recorded.stage_list] == ["sft", "grpo"]
    assert recorded.stage_list[1].grpo.rewards[0].pattern == "[0-9]"


def test_the_reward_rises_and_every_grpo_metric_is_logged(rl: Path) -> None:
    train = rows(rl, "loss")
    assert [r["step"] for r in train] == list(range(1, GRPO_STEPS + 1))
    for key in ("reward", "rewards/regex/mean", "rewards/exact_match/mean", "kl", "completions/mean_length",
                "frac_reward_zero_std"):
        assert all(key in r for r in train), key
    rewards = [r["rewards/regex/mean"] for r in train]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.2, rewards
    assert all(0.0 <= r["rewards/exact_match/mean"] <= 1.0 for r in train)
    assert math.isclose(train[-1]["reward"], train[-1]["rewards/regex/mean"] + train[-1]["rewards/exact_match/mean"],
                        abs_tol=1e-6)  # weights 1 and 1
    evals = rows(rl, "eval_reward")
    assert [r["step"] for r in evals] == [0, 4, 8]


def test_the_kl_reference_is_the_stages_true_start(rl: Path) -> None:
    train = rows(rl, "kl")
    # step 1 is scored before any update: the policy equals the reference (chat's adapter plus this phase's
    # adapter after its SFT stage). The raw base (TRL's default reference) differs from it by two adapters.
    assert abs(train[0]["kl"]) < 1e-6
    assert train[-1]["kl"] > 1e-5  # and the reference is not simply the current policy


def test_status_shows_the_rewards_and_no_false_alarm(rl: Path) -> None:
    result = run_nova("status", str(rl))
    assert result.returncode == 0, result.stderr
    assert "  reward:     " in result.stdout and "regex" in result.stdout and "exact_match" in result.stdout
    assert "kl " in result.stdout and "completion length" in result.stdout
    alerts = [json.loads(x) for x in (rl / "alerts.jsonl").read_text().splitlines()] \
        if (rl / "alerts.jsonl").exists() else []
    kinds = {a["kind"] for a in alerts if a["stage"] == "grpo"}
    assert not kinds & {"grad_norm_low", "grad_norm_high", "eval_loss_rising", "eval_reward_falling", "early_stop",
                        "throughput_drop"}


def test_merge_and_export_take_the_grpo_adapter(rl: Path, tmp_path: Path) -> None:
    merged = run_nova("merge", "--run", str(rl), "--out", str(tmp_path / "merged"))
    assert merged.returncode == 0, merged.stderr
    assert (tmp_path / "merged" / "config.json").exists()
    exported = run_nova("export", "--run", str(rl), "--format", "peft", "--out", str(tmp_path / "peft"))
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "peft" / "adapter_model.safetensors").exists()


def test_a_missing_reward_function_stops_before_the_model_loads(tmp_path: Path, tiny_model_dir: Path) -> None:
    (tmp_path / "my_rewards.py").write_text("def close(prompts, completions, **kw):\n    return [0.0] * len(prompts)\n")
    cfg = tmp_path / "g.yaml"
    cfg.write_text(f"""
name: g
model: {{base: {tiny_model_dir}, quantization: none}}
method: grpo
data: {{datasets: [{{path: {ROOT / "data" / "arithmetic.jsonl"}}}], eval_split: 0.0, cache_dir: {tmp_path / "c"}}}
grpo: {{rewards: [{{file: my_rewards.py, function: correct}}]}}
training: {{micro_batch_size: 4, gradient_accumulation_steps: 1, max_steps: 1}}
output_dir: {tmp_path / "run"}
logs_dir: {tmp_path / "logs"}
""")
    result = run_nova("train", "--config", str(cfg), "--no-preflight", cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].isascii(), result.stderr
    assert "grpo.rewards[0]" in lines[0] and "my_rewards.py" in lines[0] and "no function 'correct'" in lines[0]
    assert "functions in it: close" in lines[0]
    assert "loading" not in result.stdout  # before any weights
