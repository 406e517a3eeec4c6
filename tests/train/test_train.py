"""Training a phase end to end on the tiny model: real bitsandbytes nf4, real PEFT, real TRL SFTTrainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ROOT
from nova.config import load_yaml_config
from nova.console import RunLog
from nova.train.pipeline import run_config

pytestmark = pytest.mark.trains  # whole runs: outside the development loop (README, "Development")


def phase_yaml(tmp_path: Path, model: Path, **extra: str) -> Path:
    text = f"""
name: t
model:
  base: {model}
  quantization: {extra.get("quantization", "nf4")}
data:
  datasets:
    - path: {ROOT / "data" / "doica_ro.jsonl"}
      max_samples: 40
  eval_split: 0.2
  max_length: 128
training:
  max_steps: {extra.get("max_steps", "6")}
  micro_batch_size: 2
  gradient_accumulation_steps: 2
  learning_rate: 5.0e-3
  warmup_steps: 1
  logging_steps: 2
  eval_steps: 3
  save_steps: 2
  save_total_limit: 2
  gradient_checkpointing: true
output_dir: {tmp_path / "run"}
logs_dir: {tmp_path / "logs"}
smoke_prompts: ["Salut"]
"""
    path = tmp_path / "phase.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("sft")
    run_config(load_yaml_config(phase_yaml(tmp, tiny_model_dir)), log=RunLog(tmp / "log.txt"))
    return tmp / "run"


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_run_directory_layout(sft_run: Path) -> None:
    assert (sft_run / "adapter" / "adapter_config.json").exists()
    assert (sft_run / "adapter" / "adapter_model.safetensors").exists()
    assert (sft_run / "COMPLETE").exists()
    assert (sft_run / "config.yaml").exists()
    assert (sft_run / "smoke.jsonl").exists()
    checkpoints = sorted(p.name for p in (sft_run / "checkpoints" / "sft").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-4", "checkpoint-6"]  # save every 2, keep the last 2


def test_resolved_config_records_defaults_and_device(sft_run: Path) -> None:
    import yaml

    resolved = yaml.safe_load((sft_run / "config.yaml").read_text())
    assert resolved["lora"] == {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear",
                                "use_rslora": False}
    from nova.model.loading import cpu_has_native_bf16

    assert resolved["_resolved"]["compute_dtype"] == ("bfloat16" if cpu_has_native_bf16() else "float32")
    assert resolved["model"]["quantization"] == "nf4"


def test_metrics_have_one_object_per_logged_step(sft_run: Path) -> None:
    records = read_metrics(sft_run)
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 4, 6]
    for r in train:
        for key in ("epoch", "learning_rate", "grad_norm", "tokens_per_second", "memory_rss"):
            assert key in r, key
        assert r["tokens_per_second"] > 0
    evals = [r for r in records if "eval_loss" in r]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 6


def test_training_changed_the_adapter_and_lowered_eval_loss(sft_run: Path) -> None:
    from safetensors.torch import load_file

    weights = load_file(str(sft_run / "adapter" / "adapter_model.safetensors"))
    lora_b = [t for k, t in weights.items() if "lora_B" in k]
    assert lora_b and any(t.abs().max() > 0 for t in lora_b)  # B starts at zero
    done = json.loads((sft_run / "COMPLETE").read_text())
    stage = done["stages"][0]
    assert stage["eval_loss_end"] < stage["eval_loss_start"]


def test_the_adapter_is_trained_and_saved_in_fp32(sft_run: Path) -> None:
    """TRL casts a 4-bit model's adapter to bf16; nova keeps the fp32 master weights whatever it computes in
    (tests/train/test_bf16.py runs bf16 explicitly)."""
    from safetensors.torch import load_file

    weights = load_file(str(sft_run / "adapter" / "adapter_model.safetensors"))
    assert {str(t.dtype) for t in weights.values()} == {"torch.float32"}


def test_the_weights_were_really_quantized(tiny_model_dir: Path) -> None:
    from nova.config.schema import ModelConfig
    from nova.model.loading import choose_placement, load_base_model

    model = load_base_model(ModelConfig(base=str(tiny_model_dir)), choose_placement("auto"))
    kinds = {type(m).__name__ for m in model.modules()}
    assert "Linear4bit" in kinds


def test_pad_equal_to_eos_still_learns_eos(tiny_model_dir: Path) -> None:
    from nova.config.data_schema import DataConfig, DatasetSpec
    from nova.config.schema import ModelConfig
    from nova.data import prepare_stage_data
    from nova.model.loading import load_tokenizer

    tok = load_tokenizer(ModelConfig(base=str(tiny_model_dir)))
    assert tok.pad_token_id == tok.eos_token_id
    cfg = DataConfig(datasets=[DatasetSpec(path=str(ROOT / "data" / "sora_en.jsonl"), max_samples=5)],
                     eval_split=0.0)
    row = prepare_stage_data(cfg, tok, method="sft", seed=1).train[0]
    trained = [i for i, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
    assert trained[-2:] == [tok.eos_token_id, tok.convert_tokens_to_ids("\n")] or trained[-1] == tok.eos_token_id
    assert tok.eos_token_id in trained


def test_infer_with_the_adapter_differs_from_the_base(sft_run: Path) -> None:
    from nova.infer import load_model
    from nova.model.generate import Sampling, generate_chat

    prompt = [{"role": "user", "content": "Care este capitala Romaniei?"}]
    tuned = load_model(sft_run)
    base = load_model(sft_run, base_only=True)
    sampling = Sampling(max_new_tokens=12)
    assert generate_chat(tuned.model, tuned.tokenizer, prompt, sampling) != \
        generate_chat(base.model, base.tokenizer, prompt, sampling)


def test_rerun_skips_a_finished_phase(sft_run: Path, tmp_path: Path) -> None:
    config = sft_run.parent / "phase.yaml"
    before = (sft_run / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    results = run_config(load_yaml_config(config), log=RunLog(tmp_path / "log.txt"))
    assert results[0].skipped
    assert (sft_run / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == before


def test_auto_fit_keeps_the_effective_batch_and_records_the_choice(tiny_model_dir: Path, tmp_path: Path) -> None:
    from nova.config.load import LoadedConfig
    from nova.config.schema import PhaseConfig
    from nova.console import RunLog
    from nova.model.loading import choose_placement
    from nova.plan import make_plan
    from nova.train.context import PhaseRun
    from nova.train.phase import auto_fit_stages

    phase = PhaseConfig.model_validate({
        "name": "t", "model": {"base": str(tiny_model_dir)},
        "data": {"datasets": [{"path": str(ROOT / "data" / "doica_ro.jsonl")}], "max_length": 1024},
        "training": {"micro_batch_size": 8, "gradient_accumulation_steps": 2, "auto_fit": True,
                     "gradient_checkpointing": False}})
    planned = make_plan(LoadedConfig(tmp_path / "t.yaml", phase, {})).phases[0]
    run = PhaseRun(planned, (), RunLog(None))
    placement = choose_placement("auto")
    roomy, _ = auto_fit_stages(run, planned.stages, str(tiny_model_dir), placement, budget_bytes=8 * 1024**3)
    assert roomy[0].config.training.micro_batch_size == 8  # fits as configured: untouched
    changed = None
    for budget in range(700, 1400, 20):  # MiB: find a budget where the configured batch does not fit
        stages, fits = auto_fit_stages(run, planned.stages, str(tiny_model_dir), placement,
                                       budget_bytes=budget * 1024**2)
        if fits["sft"]["changed"]:
            changed = stages[0].config.training, fits["sft"]
            break
    assert changed is not None
    training, record = changed
    assert training.micro_batch_size < 8
    assert training.micro_batch_size * training.gradient_accumulation_steps == 16
    assert record["fits"] and "same effective batch 16" in record["reason"]
    with pytest.raises(Exception, match="does not fit"):
        auto_fit_stages(run, planned.stages, str(tiny_model_dir), placement, budget_bytes=10 * 1024**2)


def test_prompts_file_matches_per_prompt_greedy_generation(sft_run: Path, tmp_path: Path) -> None:
    from conftest import run_nova

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Salut"}\n{"messages": [{"role": "user", "content": "Ce mai faci?"}]}\n')
    out = tmp_path / "answers.jsonl"
    batch = run_nova("infer", "--model", str(sft_run), "--prompts-file", str(prompts), "--out", str(out),
                     "--max-new-tokens", "8", "--compare")
    assert batch.returncode == 0, batch.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["Salut", "Ce mai faci?"]
    assert all("base_answer" in r for r in rows)
    single = run_nova("infer", "--model", str(sft_run), "--prompt", "Salut", "--max-new-tokens", "8", "--json")
    assert single.returncode == 0, single.stderr
    assert json.loads(single.stdout.strip().splitlines()[-1])["answer"] == rows[0]["answer"]


def test_eval_reports_holdout_loss_and_perplexity(sft_run: Path) -> None:
    import math

    from nova.infer import eval_loss, load_model

    rows = eval_loss(load_model(sft_run))
    assert rows[0]["tokens"] > 0 and math.isclose(rows[0]["perplexity"], math.exp(rows[0]["eval_loss"]))
    done = json.loads((sft_run / "COMPLETE").read_text())["stages"][0]
    assert math.isclose(rows[0]["eval_loss"], done["eval_loss_end"], rel_tol=0.05)


def test_bad_prompts_file_names_the_line(sft_run: Path, tmp_path: Path) -> None:
    from conftest import run_nova

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "ok"}\n{"prompt": 3}\n')
    result = run_nova("infer", "--model", str(sft_run), "--prompts-file", str(prompts))
    assert result.returncode != 0 and f"{prompts}:2" in result.stderr and "Traceback" not in result.stderr
