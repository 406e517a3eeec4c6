"""The estimate follows the code path nova runs for a stage, and the verdict carries its margin."""

from __future__ import annotations

from pathlib import Path

from preflight_support import cuda_env, loaded, no_gpu

from conftest import ROOT
from nova.config.schema import LoraConfig, ModelConfig, StageConfig, TrainingConfig
from nova.methods.dpo import DPOConfig
from nova.preflight import run_preflight
from nova.preflight.checks_memory import stage_settings
from nova.preflight.model_source import known_architecture

MODEL = ModelConfig(base="x")


def _sft(**training: object) -> StageConfig:
    return StageConfig(training=TrainingConfig(**training))  # type: ignore[arg-type]


def test_sft_is_padding_free_rows_under_autocast_through_novas_loss() -> None:
    s = stage_settings(MODEL, LoraConfig(), _sft(micro_batch_size=4), on_gpu=True)
    assert s.loss_impl == "nova" and s.autocast and s.lora_bytes == 4 and not s.upcast_unquantized
    # SDPA once per packed sequence (nova.model.attention): no mask, each sequence at most data.max_length
    assert not s.attention_masked and s.row == s.seq_len and s.rows == 4
    eager = stage_settings(ModelConfig(base="x", attn_implementation="eager"), LoraConfig(),
                           _sft(micro_batch_size=4), on_gpu=True)
    assert eager.attention_masked and eager.row == eager.seq_len  # rows cut at data.max_length, masked
    flash = stage_settings(ModelConfig(base="x", attn_implementation="flash_attention_2"), LoraConfig(),
                           _sft(micro_batch_size=4), on_gpu=True)
    assert not flash.attention_masked  # varlen: sequence boundaries as lengths, no mask
    padded = stage_settings(MODEL, LoraConfig(), _sft(packing="pad"), on_gpu=True)
    assert padded.attention_masked and padded.row == padded.seq_len


def test_token_budget_sets_the_micro_batch() -> None:
    s = stage_settings(MODEL, LoraConfig(), _sft(max_tokens_per_batch=16384), on_gpu=True)
    assert s.tokens == 16384
    tiny = stage_settings(MODEL, LoraConfig(), _sft(max_tokens_per_batch=100), on_gpu=True)
    assert tiny.tokens == tiny.seq_len  # a sequence longer than the budget gets a batch of its own


def test_dpo_runs_under_autocast_without_dropout_scoring_completions() -> None:
    stage = StageConfig(method="dpo", training=TrainingConfig(micro_batch_size=2),
                        dpo=DPOConfig(max_prompt_length=512, max_completion_length=256))
    s = stage_settings(MODEL, LoraConfig(dropout=0.1), stage, on_gpu=True)
    assert s.autocast and s.lora_dropout == 0.0 and s.loss_impl == "fused"
    assert s.seq_len == 768 and s.sequences == 4 and s.loss_tokens == 4 * 256


def test_borderline_case_says_may_not_fit_with_the_fix(tmp_path: Path) -> None:
    first = run_preflight(loaded(tmp_path, "mistral-7b-v0.2"), gpu_memory="80GiB", env=cuda_env(), probe=no_gpu())
    est = first.estimate
    assert est is not None and est["upper_bytes"] > est["total_bytes"]
    between = (est["total_bytes"] + est["upper_bytes"]) // 2 // 1024**2
    report = run_preflight(loaded(tmp_path / "b", "mistral-7b-v0.2"), gpu_memory=f"{between}MiB", env=cuda_env(),
                           probe=no_gpu())
    check = report.check("memory")
    assert check is not None and check.status == "warn" and "may not fit" in check.message
    assert "micro_batch_size 4 -> 2" in check.fix and "data.max_length 2048 -> 1024" in check.fix


def test_chained_phase_counts_the_frozen_adapters(tmp_path: Path) -> None:
    import json

    import yaml
    from preflight_support import data_file, model_dir

    from nova.config.load import load_yaml_config

    model, text = model_dir(tmp_path, "llama-3-8b"), data_file(tmp_path)
    cfg = {"output_dir": str(tmp_path / "runs"), "phases": [
        {"name": "a", "model": {"base": str(model)}, "lora": {"r": 64}, "data": {"datasets": [{"path": str(text)}]}},
        {"name": "b", "start_from": "a", "data": {"datasets": [{"path": str(text)}]}}]}
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    from nova.plan import make_plan
    from nova.preflight.checks_memory import planned_settings
    from nova.preflight.estimate import Settings, lora_params, model_shape

    plan = make_plan(load_yaml_config(path))
    shape = model_shape(json.loads((model / "config.json").read_text()))
    first, second = plan.phases
    assert planned_settings(shape, first, first.stages[0], on_gpu=True).frozen_lora_params == 0
    frozen = planned_settings(shape, second, second.stages[0], on_gpu=True).frozen_lora_params
    assert frozen == lora_params(shape, Settings(lora_r=64))
    assert planned_settings(shape, plan.select("b").phases[0], second.stages[0], on_gpu=True).frozen_lora_params \
        == frozen  # --phase b alone still knows the adapter it stacks


def test_shipped_model_configs_are_full_and_known() -> None:
    """The GPU kit builds these architectures; preflight knows their hub ids before any download."""
    import json

    folder = ROOT / "src" / "nova" / "resources" / "model_configs"
    names = {p.stem for p in folder.glob("*.json")}
    assert {"Llama-3.1-8B", "Mistral-7B-v0.3", "Qwen2.5-7B", "Qwen2.5-1.5B"} <= names
    for path in folder.glob("*.json"):
        cfg = json.loads(path.read_text())
        assert cfg["architectures"] and cfg["model_type"] and cfg["vocab_size"] > 30000
    assert known_architecture("Qwen/Qwen2.5-7B-Instruct") is not None
