"""Preflight on a GRPO stage: its learning-rate range, a schedule counted in prompts, its memory path."""

from __future__ import annotations

from nova.config.schema import LoraConfig, ModelConfig, StageConfig
from nova.preflight.checks_inputs import check_learning_rate, check_schedule
from nova.preflight.checks_memory import stage_settings
from nova.preflight.estimate import estimate_memory

GRPO = {"num_generations": 4, "max_prompt_length": 100, "max_completion_length": 28,
        "rewards": [{"name": "exact_match"}]}


def stage(**training: object) -> StageConfig:
    return StageConfig(method="grpo", grpo=GRPO, training={"micro_batch_size": 8, "gradient_accumulation_steps": 2,
                                                           **training})


def test_the_schedule_counts_prompts_not_completions() -> None:
    check = check_schedule("s", stage(max_steps=16), 64)
    assert check.status == "pass" and "16 steps x 4 prompts over 64 records = 1.00 epochs" in check.message


def test_grpo_has_its_own_learning_rate_range() -> None:
    assert check_learning_rate("s", stage(learning_rate=1e-5)).status == "pass"
    high = check_learning_rate("s", stage(learning_rate=1e-3))
    assert high.status == "warn" and "about 1e-05" in high.fix


def test_memory_is_one_completion_per_sequence_with_the_head_on_completions() -> None:
    settings = stage_settings(ModelConfig(base="x"), LoraConfig(), stage(), on_gpu=True)
    assert settings.method == "grpo" and settings.sequences == 8  # not doubled like DPO's pairs
    assert settings.seq_len == 128 and settings.loss_tokens == 8 * 28 and settings.lora_dropout == 0.0
    config = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
              "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True,
              "max_position_embeddings": 8192, "model_type": "llama"}
    est = estimate_memory(config, settings)
    assert any(note.startswith("GRPO:") for note in est.notes)
