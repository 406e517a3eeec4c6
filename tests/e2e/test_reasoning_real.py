"""Reasoning data end to end on the real SmolLM2-135M-Instruct with the real Qwen3 chat template.

Trains configs/demo/reasoning.yaml (arithmetic with worked reasoning and plain answers, held at
50/50; two-turn chats split per reply because Qwen3 drops earlier reasoning), then checks the
masks with the real tokenizer, the data report, and that the tuned model answers with both
thinking on and off. Slow (a few minutes on 2 CPU cores).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT
from data_fixtures import trained_segments
from nova.config import load_yaml_config
from nova.console import RunLog
from nova.train.pipeline import run_config

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
QWEN3 = ROOT / "tests" / "fixtures" / "chat-templates" / "Qwen-Qwen3-0.6B.jinja"


@pytest.fixture(scope="module")
def reasoning_run(tmp_path_factory: pytest.TempPathFactory, real_model_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("reasoning")
    overrides = [f"output_dir={tmp / 'out'}", f"logs_dir={tmp / 'logs'}", f"model.base={real_model_dir}",
                 f"model.chat_template={QWEN3}", f"data.datasets.0.path={ROOT / 'data' / 'reasoning_math.jsonl'}",
                 f"data.datasets.1.path={ROOT / 'data' / 'sora_en.jsonl'}", f"data.cache_dir={tmp / 'cache'}",
                 "training.max_steps=12", "training.eval_steps=12", "training.save_steps=100"]
    run_config(load_yaml_config(ROOT / "configs" / "demo" / "reasoning.yaml", overrides), log=RunLog(tmp / "log.txt"))
    return tmp / "out"


def test_the_run_learns_and_reports_the_mix(reasoning_run: Path) -> None:
    rows = [json.loads(x) for x in (reasoning_run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_loss" in r]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 12
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 0.05
    report = json.loads((reasoning_run / "stages" / "sft" / "data_report.json").read_text())
    assert report["reasoning_examples"] == report["plain_examples"] > 0  # reasoning_ratio 0.5
    assert report["per_turn_sequences"] > report["per_turn_chats"] > 0  # two-turn chats, one sequence per reply
    assert report["empty_think_masked"] > 0
    assert 0 < report["tokens"]["reasoning_trained_tokens"] < report["tokens"]["trained_tokens"]
    assert (reasoning_run / "smoke.jsonl").exists()


def test_masks_with_the_real_tokenizer(reasoning_run: Path, real_model_dir: Path) -> None:
    from nova.data import prepare_stage_data
    from nova.model.loading import load_tokenizer, resolve_base
    from nova.runs.record import read_run

    record = read_run(reasoning_run)
    tokenizer = load_tokenizer(record.model, resolve_base(record.model))
    stage = record.phase.stage_list[0]
    prepared = prepare_stage_data(stage.data, tokenizer, method="sft", seed=stage.training.seed)
    thinking = plain = 0
    for row in prepared.train:
        [trained] = trained_segments(tokenizer, row["input_ids"], row["labels"])
        assert trained.endswith("<|im_end|>") and "<|im_start|>" not in trained
        if trained.startswith("<think>\n"):
            thinking += 1
            assert "\n</think>\n\n" in trained
        else:
            plain += 1
            assert "think>" not in trained  # the template's empty block stays untrained
            assert tokenizer.decode(row["input_ids"]).count("<think>\n\n</think>\n\n") == 1
    assert thinking and plain


def test_the_tuned_model_answers_with_thinking_on_and_off(reasoning_run: Path) -> None:
    from nova.infer import load_model
    from nova.model.generate import Sampling, generate_reply

    loaded = load_model(reasoning_run)
    question = [{"role": "user", "content": "Compute 1234 * 56 and give me the answer."}]
    sampling = Sampling(max_new_tokens=48)
    on: Any = generate_reply(loaded.model, loaded.tokenizer, question, sampling)
    off: Any = generate_reply(loaded.model, loaded.tokenizer, question, sampling, think=False)
    assert on.text.strip() and off.text.strip()  # the empty think block of --no-think is in the prompt
