"""Full fine-tuning (adapter: full) of the real SmolLM2-135M-Instruct, end to end, on the CPU in fp32.

Four steps over one effective batch of real chats (data/doica_short_ro.jsonl, the same two records
every step, so the training loss must fall), short sequences, no gradient checkpointing (the tiny-model
tests train with it; here it would only recompute the forward). The run leaves a standard model
directory: plain ``from_pretrained`` loads it (no PEFT, no merge) and gives the logits nova's own
loader gives for the run, and every weight tensor of the model moved. Most of a step on the CPU is the
dense embedding gradient and AdamW over all 135M weights, not the few tokens.
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


@pytest.fixture(scope="module")
def real_full(tmp_path_factory: pytest.TempPathFactory, real_model_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("real-full")
    text = f"""
name: full
adapter: full
model: {{base: {real_model_dir}, quantization: none, compute_dtype: fp32}}
output_dir: {tmp / "run"}
logs_dir: {tmp / "logs"}
data: {{datasets: [{{path: {ROOT / "data" / "doica_short_ro.jsonl"}, max_samples: 2}}], eval_split: 0.0,
       max_length: 96}}
training: {{max_steps: 4, micro_batch_size: 2, gradient_accumulation_steps: 1, learning_rate: 5.0e-5,
           warmup_steps: 0, logging_steps: 1, save_steps: 100, gradient_checkpointing: false}}
"""
    config = tmp / "full.yaml"
    config.write_text(text)
    run_config(load_yaml_config(config), log=RunLog(tmp / "log.txt"))
    return tmp / "run"


def test_loss_falls_and_every_weight_moves(real_full: Path, real_model_dir: Path) -> None:
    from safetensors.torch import load_file

    rows = [json.loads(x) for x in (real_full / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 4 and losses[-1] < losses[0]
    before = load_file(str(real_model_dir / "model.safetensors"))
    after = load_file(str(real_full / "model" / "model.safetensors"))
    assert set(before) == set(after)
    assert [k for k in before if bool((before[k].float() == after[k].float()).all())] == []


def test_plain_from_pretrained_matches_nova_infer(real_full: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nova.infer import load_model

    plain = AutoModelForCausalLM.from_pretrained(str(real_full / "model"), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(real_full / "model"))
    loaded = load_model(real_full)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Ce inseamna cuvantul doica?"}],
                                         tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, loaded.model(ids).logits)
