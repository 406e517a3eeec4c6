"""KTO, ORPO and SimPO on the tiny model: an SFT phase, then a feedback phase chained on it.

The feedback phase runs a short SFT stage, then KTO, ORPO and SimPO on the same adapter, so one
pipeline checks that each trains and moves its loss and reward margin the right way, that KTO's
reference is the stage's true starting point (the chained phase plus this phase's adapter after its
SFT stage; step 0: policy equals reference), and that the stages hand the adapter on.
The data is synthetic with one clear pattern (a good reply names the number, a bad one refuses;
tests/method_fixtures.py), so a few steps on a random model are enough to see it learned; the
real sets (data/kto_en.jsonl, data/sora_dpo.jsonl) train on SmolLM2 in tests/e2e/test_methods_real.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from method_fixtures import write_method_data
from nova.config import load_yaml_config
from nova.console import RunLog
from nova.train.pipeline import run_config

pytestmark = pytest.mark.trains  # whole runs: outside the development loop (README, "Development")

TRAIN = ("{max_steps: %d, micro_batch_size: 4, gradient_accumulation_steps: 1, learning_rate: %s, "
         "warmup_steps: 0, logging_steps: 1, eval_steps: 100, save_steps: 100, gradient_checkpointing: false}")
LENGTHS = "max_prompt_length: 32, max_completion_length: 16"


def pipeline_yaml(tmp: Path, model: Path) -> Path:
    files = write_method_data(tmp)
    text = f"""
output_dir: {tmp / "out"}
phases:
  - name: chat
    model: {{base: {model}, quantization: nf4}}
    data: {{datasets: [{{path: {files["sft"]}}}], eval_split: 0.0, max_length: 64, cache_dir: {tmp / "cache"}}}
    training: {TRAIN % (3, "1.0e-2")}
    logs_dir: {tmp / "logs"}
  - name: fb
    start_from: chat
    logs_dir: {tmp / "logs"}
    stages:
      - method: sft
        data: {{datasets: [{{path: {files["sft"]}}}], eval_split: 0.0, max_length: 64, cache_dir: {tmp / "cache"}}}
        training: {TRAIN % (2, "1.0e-2")}
      - method: kto
        data: {{datasets: [{{path: {files["feedback"]}}}], eval_split: 0.25, cache_dir: {tmp / "cache"}}}
        kto: {{beta: 0.1, {LENGTHS}}}
        training: {TRAIN % (6, "2.0e-2")}
      - method: orpo
        data: {{datasets: [{{path: {files["pairs"]}}}], eval_split: 0.25, cache_dir: {tmp / "cache"}}}
        orpo: {{beta: 1.0, {LENGTHS}}}
        training: {TRAIN % (5, "5.0e-3")}
      - method: simpo
        data: {{datasets: [{{path: {files["pairs"]}}}], eval_split: 0.25, cache_dir: {tmp / "cache"}}}
        simpo: {{beta: 2.0, gamma: 0.5, {LENGTHS}}}
        training: {TRAIN % (5, "5.0e-3")}
"""
    path = tmp / "pipeline.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def feedback(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("methods")
    run_config(load_yaml_config(pipeline_yaml(tmp, tiny_model_dir)), log=RunLog(tmp / "log.txt"))
    return tmp / "out" / "fb"


def metrics(run: Path, stage: str, key: str) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["stage"] == stage and key in r]


def test_every_stage_finished_with_its_adapter_and_fingerprint(feedback: Path) -> None:
    assert (feedback / "COMPLETE").exists()
    for stage in ("kto", "orpo", "simpo"):
        done = json.loads((feedback / "stages" / stage / "DONE").read_text())
        assert done["method"] == stage and done["steps"] > 0
        assert (feedback / "stages" / stage / "adapter" / "adapter_model.safetensors").exists()
        assert done["fingerprint"]["values"]["method"] == stage
    kto = json.loads((feedback / "stages" / "kto" / "DONE").read_text())["fingerprint"]["values"]
    assert kto["kto.beta"] == 0.1 and kto["kto.desirable_weight"] == 1.0
    simpo = json.loads((feedback / "stages" / "simpo" / "DONE").read_text())["fingerprint"]["values"]
    assert simpo["simpo.gamma"] == 0.5 and "kto.beta" not in simpo
    report = json.loads((feedback / "stages" / "kto" / "data_report.json").read_text())
    assert report["desirable"] + report["undesirable"] == 24
    from nova.runs.record import read_run

    recorded = read_run(feedback).phase  # config.yaml reads back with every method's section
    assert [s.method for s in recorded.stage_list] == ["sft", "kto", "orpo", "simpo"]
    assert recorded.stage_list[3].simpo.gamma == 0.5


def test_kto_step_zero_policy_equals_the_chained_reference(feedback: Path) -> None:
    first = metrics(feedback, "kto", "eval_loss")[0]
    assert first["step"] == 0
    # policy == reference (chat's adapter and this phase's after its SFT stage, not the raw base):
    # every reward and the KL estimate are 0, so each reply's loss is 1 - sigmoid(0)
    assert math.isclose(first["eval_loss"], 0.5, abs_tol=1e-4)
    assert abs(first["eval_rewards/chosen"]) < 1e-4 and abs(first["eval_rewards/rejected"]) < 1e-4
    assert abs(first["eval_kl"]) < 1e-4


def test_kto_raises_good_replies_over_bad_ones(feedback: Path) -> None:
    evals = metrics(feedback, "kto", "eval_loss")
    start, end = evals[0], evals[-1]
    assert end["step"] == 6
    assert end["eval_rewards/margins"] > start["eval_rewards/margins"] + 0.1
    assert end["eval_loss"] < start["eval_loss"]
    assert {"kl", "rewards/chosen", "rewards/rejected", "logps/chosen"} <= set(metrics(feedback, "kto", "loss")[-1])


@pytest.mark.parametrize("stage", ["orpo", "simpo"])
def test_reference_free_methods_learn_the_preference(feedback: Path, stage: str) -> None:
    evals = metrics(feedback, stage, "eval_loss")
    start, end = evals[0], evals[-1]
    assert start["step"] == 0 and end["step"] == 5
    assert end["eval_rewards/margins"] > start["eval_rewards/margins"]
    assert end["eval_rewards/accuracies"] >= start["eval_rewards/accuracies"]
    assert end["eval_loss"] < start["eval_loss"]
    train = metrics(feedback, stage, "loss")[-1]
    assert {"rewards/chosen", "rewards/margins", "nll_loss"} <= set(train)
    if stage == "orpo":
        assert end["eval_log_odds_ratio"] > start["eval_log_odds_ratio"]


def test_an_oom_retry_keeps_two_replies_in_a_kto_micro_batch() -> None:
    from nova.config.schema import TrainingConfig
    from nova.train.machinery.resilience import smaller_batch

    half = smaller_batch(TrainingConfig(micro_batch_size=4, gradient_accumulation_steps=2), minimum=2)
    assert (half.micro_batch_size, half.gradient_accumulation_steps) == (2, 4)
    assert smaller_batch(half, minimum=2) is None  # KTO's KL term pairs replies within a micro batch
    assert smaller_batch(half).micro_batch_size == 1  # any other method may go down to one
