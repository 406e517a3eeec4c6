"""End to end on the real SmolLM2-135M-Instruct (imported from GGUF by scripts/setup.sh).

A short QLoRA pipeline: Doica (SFT on Romanian chats) then Sora (DPO on real preference pairs,
starting from Doica). Slow (a few minutes on 2 CPU cores), so kept to this one module.
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
def real_run(tmp_path_factory: pytest.TempPathFactory, real_model_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("real")
    common = "warmup_steps: 1, logging_steps: 2, save_steps: 100, gradient_checkpointing: false"
    text = f"""
output_dir: {tmp / "out"}
phases:
  - name: doica
    model: {{base: {real_model_dir}, quantization: nf4}}
    data: {{datasets: [{{path: {ROOT / "data" / "doica_ro.jsonl"}, max_samples: 48}}], eval_split: 0.15,
            max_length: 192}}
    training: {{max_steps: 8, micro_batch_size: 2, gradient_accumulation_steps: 2, learning_rate: 1.0e-3,
                eval_steps: 8, {common}}}
    logs_dir: {tmp / "logs"}
  - name: sora
    start_from: doica
    method: dpo
    lora: {{r: 16, alpha: 32, dropout: 0.0}}
    data: {{datasets: [{{path: {ROOT / "data" / "sora_dpo.jsonl"}, max_samples: 40}}], eval_split: 0.25}}
    dpo: {{beta: 0.1, max_prompt_length: 64, max_completion_length: 48}}
    training: {{max_steps: 8, micro_batch_size: 2, gradient_accumulation_steps: 2, learning_rate: 3.0e-4,
                eval_steps: 8, {common}}}
    logs_dir: {tmp / "logs"}
"""
    config = tmp / "pipeline.yaml"
    config.write_text(text)
    run_config(load_yaml_config(config), log=RunLog(tmp / "log.txt"))
    return tmp / "out"


def _evals(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "eval_loss" in r]


def test_qlora_sft_lowers_the_eval_loss(real_run: Path) -> None:
    evals = _evals(real_run / "doica")
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 8
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 0.05


def test_adapter_reloads_and_changes_the_answers(real_run: Path) -> None:
    from nova.infer import load_model
    from nova.model.generate import Sampling, generate_chat

    prompt = [{"role": "user", "content": "Care este capitala Romaniei?"}]
    tuned = load_model(real_run / "doica")
    base = load_model(real_run / "doica", base_only=True)
    sampling = Sampling(max_new_tokens=24)
    tuned_answer = generate_chat(tuned.model, tuned.tokenizer, prompt, sampling)
    base_answer = generate_chat(base.model, base.tokenizer, prompt, sampling)
    assert tuned_answer and base_answer and tuned_answer != base_answer


def test_dpo_from_a_chained_phase_learns_the_preference(real_run: Path) -> None:
    import math

    start, end = _evals(real_run / "sora")[0], _evals(real_run / "sora")[-1]
    assert start["step"] == 0 and math.isclose(start["eval_loss"], math.log(2), abs_tol=1e-3)
    assert end["eval_rewards/margins"] > start["eval_rewards/margins"]
    assert end["eval_rewards/accuracies"] > start["eval_rewards/accuracies"]
    assert end["eval_loss"] < start["eval_loss"]


def test_a_qlora_chain_exported_for_ollama_gives_the_merged_models_next_tokens(real_run: Path,
                                                                               tmp_path: Path) -> None:
    """The done-when of issue 26: `nova export --run --format ollama` of the QLoRA chain (Doica's SFT and
    Sora's DPO adapters over the nf4 base) is the model `nova merge` writes, next token for next token on
    the run's held-out chats, and prints and records its parity figures; over the original base it is not."""
    import torch
    from transformers import AutoModelForCausalLM

    from conftest import run_nova
    from nova.export.parity import compare, llama_cpp_logits
    from nova.export.run_source import open_run
    from nova.merge.parity import compute_logits

    sora = real_run / "sora"
    result = run_nova("export", "--run", str(sora), "--format", "ollama", "--out", str(tmp_path / "ollama"))
    assert result.returncode == 0, result.stderr
    assert "parity: llama.cpp (base-f16.gguf + adapter.gguf) vs the trained composition" in result.stdout
    info = json.loads((tmp_path / "ollama" / "nova_export.json").read_text())
    assert info["base"]["from"] == "dequantized" and info["parity"]["agreement"] >= 0.98, info["parity"]
    assert run_nova("merge", "--run", str(sora), "--out", str(tmp_path / "merged")).returncode == 0
    run = open_run(sora)  # the held-out chats (Sora's held-out pairs) and the check's token ids
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"), dtype=torch.float32)
    reference = compute_logits(merged, run.batches)
    exported = llama_cpp_logits(tmp_path / "ollama" / "base-f16.gguf", run.batches,
                                lora=tmp_path / "ollama" / "adapter.gguf")
    agreement, _, tokens = compare(reference, exported)
    assert agreement >= 0.98 and tokens > 200, (agreement, tokens)
    original = run_nova("export", "--run", str(sora), "--format", "ollama", "--from", "original", "--out",
                        str(tmp_path / "original"))
    assert original.returncode == 0 and "warning: --from original" in original.stdout
    trained = json.loads((tmp_path / "original" / "nova_export.json").read_text())["parity"]["vs_trained"]
    assert trained["agreement"] < agreement, trained  # the original base is another model
