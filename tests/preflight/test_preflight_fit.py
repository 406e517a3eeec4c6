"""Auto-fit: keeps the effective batch, fits the budget with a margin, says why."""

from __future__ import annotations

from pathlib import Path

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


def test_fit_stage_from_config_objects(tmp_path: Path) -> None:
    from nova.config.load import LoadedConfig
    from nova.config.schema import PhaseConfig
    from nova.plan import make_plan

    phase = PhaseConfig.model_validate({"name": "p", "model": {"base": "x"},
                                        "training": {"micro_batch_size": 8, "gradient_accumulation_steps": 2}})
    planned = make_plan(LoadedConfig(tmp_path / "p.yaml", phase, {})).phases[0]
    choice = fit_stage(model_configs()["mistral-7b-v0.2"], planned, planned.stages[0], 12 * GiB)
    assert choice.micro_batch_size * choice.gradient_accumulation_steps == 16
    assert choice.to_dict()["reason"] == choice.reason


def test_auto_fit_sizes_a_stage_as_preflight_does(tmp_path: Path) -> None:
    """A DPO stage after an SFT stage, in a phase stacked on an earlier one: auto-fit in nova train counts the
    reference copy of the adapter and the chain's frozen adapter, as preflight's memory check does, so both
    choose the same batch from the same free memory."""
    import json

    import yaml
    from preflight_support import data_file, model_dir

    from nova.config.load import load_yaml_config
    from nova.plan import make_plan
    from nova.preflight import run_preflight

    model, text = model_dir(tmp_path, "llama-3-8b"), data_file(tmp_path)
    data = {"datasets": [{"path": str(text)}], "max_length": 2048}
    training = {"micro_batch_size": 8, "gradient_accumulation_steps": 2, "auto_fit": True,
                "gradient_checkpointing": False}
    cfg = {"output_dir": str(tmp_path / "runs"), "phases": [
        {"name": "a", "model": {"base": str(model)}, "lora": {"r": 256}, "data": data},
        {"name": "b", "start_from": "a", "lora": {"r": 256}, "stages": [
            {"method": "sft", "data": data}, {"method": "dpo", "data": data, "training": training,
                                               "dpo": {"max_prompt_length": 1024, "max_completion_length": 1024}}]}]}
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    loaded = load_yaml_config(path)
    report = run_preflight(loaded, gpu_memory="24GiB", check_data=False)
    assert report.estimate is not None and report.estimate["stage"] == "b/dpo"
    assert report.estimate["breakdown"]["dpo_reference"] > 0  # the adapter's copy as the stage began
    planned = make_plan(loaded).phases[1]
    free = report.gpus[0]["free_bytes"]
    choice = fit_stage(json.loads((model / "config.json").read_text()), planned, planned.stages[1], free)
    assert report.auto_fit is not None and choice.changed
    assert choice.to_dict() == report.auto_fit


def test_a_probe_that_measured_more_than_the_estimate_makes_auto_fit_choose_smaller(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """auto_fit reads the calibration a probe stored for this model, path and GPU (issue 30: it did not)."""
    from nova.preflight import probe_calibration as pc

    monkeypatch.setenv("NOVA_CACHE_DIR", str(tmp_path))
    settings = with_batch(Settings(micro_batch_size=8, seq_len=2048, device="cuda"), 8, True)
    budget = _with_margin(8, True) + GiB  # fits as configured by the plain estimate
    plain = fit_batch(SHAPE, settings, 2, budget)
    assert plain.fits and not plain.changed

    def calibrate(e: object) -> object:
        return pc.calibrated(e, SHAPE, "NVIDIA GeForce RTX 4090")  # type: ignore[arg-type]

    assert fit_batch(SHAPE, settings, 2, budget, calibrate=calibrate).micro_batch_size == 8  # nothing stored yet
    est = estimate_for_shape(SHAPE, settings, CALIBRATED)
    pc.store(settings, SHAPE, est.total_bytes, int(est.total_bytes * 1.5), "cuda", "NVIDIA GeForce RTX 4090")
    corrected = fit_batch(SHAPE, settings, 2, budget, calibrate=calibrate)
    assert corrected.fits and corrected.micro_batch_size < 8
    assert corrected.micro_batch_size * corrected.gradient_accumulation_steps == 16
