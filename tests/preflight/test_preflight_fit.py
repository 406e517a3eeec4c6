"""Auto-fit: keeps the effective batch, fits the budget with a margin, says why."""

from __future__ import annotations

import pytest
from preflight_support import GiB, model_configs

from nova.preflight import fit_batch, fit_stage
from nova.preflight.estimate import CALIBRATED, Settings, estimate_for_shape, model_shape, with_batch

SHAPE = model_shape(model_configs()["mistral-7b-v0.2"])
BASE = Settings(micro_batch_size=8, seq_len=2048, gradient_checkpointing=False)


def _need(mb: int, gc: bool) -> int:
    return estimate_for_shape(SHAPE, with_batch(BASE, mb, gc), CALIBRATED).total_bytes


def _with_margin(mb: int, gc: bool) -> int:
    """What auto-fit must leave room for: the estimate plus the wider of 10% and its stated band."""
    est = estimate_for_shape(SHAPE, with_batch(BASE, mb, gc), CALIBRATED)
    return est.total_bytes + int(max(0.10, est.uncertainty) * est.reserved_bytes)


def test_configured_settings_win_when_they_fit() -> None:
    choice = fit_batch(SHAPE, BASE, 2, 400 * GiB)
    assert not choice.changed and choice.fits
    assert (choice.micro_batch_size, choice.gradient_accumulation_steps, choice.gradient_checkpointing) == (8, 2, False)
    assert "fits as configured" in choice.reason


@pytest.mark.parametrize("budget_gib", [16, 20, 24, 40, 80])
def test_choice_keeps_effective_batch_and_fits_with_margin(budget_gib: int) -> None:
    budget = budget_gib * GiB
    choice = fit_batch(SHAPE, BASE, 2, budget, margin=0.10)
    assert choice.micro_batch_size * choice.gradient_accumulation_steps == 16
    assert choice.fits
    assert _with_margin(choice.micro_batch_size, choice.gradient_checkpointing) <= budget
    assert choice.estimate_bytes == _need(choice.micro_batch_size, choice.gradient_checkpointing)


def test_prefers_a_smaller_batch_before_turning_on_checkpointing() -> None:
    # a budget where micro batch 2 fits without checkpointing
    budget = _with_margin(2, False) + 1
    choice = fit_batch(SHAPE, BASE, 2, budget)
    assert (choice.micro_batch_size, choice.gradient_checkpointing) == (2, False)
    assert "micro_batch_size 8 -> 2" in choice.reason and "gradient_accumulation_steps 2 -> 8" in choice.reason


def test_turns_on_checkpointing_when_no_batch_fits_without() -> None:
    budget = _with_margin(1, False) - GiB // 2  # even micro batch 1 does not fit without checkpointing
    choice = fit_batch(SHAPE, BASE, 2, budget)
    assert choice.fits and choice.gradient_checkpointing
    assert "gradient checkpointing on" in choice.reason


def test_says_so_when_nothing_fits() -> None:
    choice = fit_batch(SHAPE, BASE, 2, 4 * GiB)
    assert not choice.fits and choice.micro_batch_size == 1 and choice.gradient_checkpointing
    assert "does not fit" in choice.reason and "data.max_length" in choice.reason


def test_effective_batch_with_odd_factors() -> None:
    choice = fit_batch(SHAPE, Settings(micro_batch_size=6, seq_len=2048), 1, 14 * GiB)
    assert choice.micro_batch_size in (6, 3, 2, 1)
    assert choice.micro_batch_size * choice.gradient_accumulation_steps == 6


def test_fit_stage_from_config_objects() -> None:
    from nova.config.schema import LoraConfig, ModelConfig, StageConfig, TrainingConfig

    stage = StageConfig(training=TrainingConfig(micro_batch_size=8, gradient_accumulation_steps=2))
    choice = fit_stage(model_configs()["mistral-7b-v0.2"], ModelConfig(base="x"), LoraConfig(), stage, 12 * GiB)
    assert choice.micro_batch_size * choice.gradient_accumulation_steps == 16
    assert choice.to_dict()["reason"] == choice.reason
