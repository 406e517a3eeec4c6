"""KTO, ORPO and SimPO in the config, the memory estimate, the learning-rate check and the fingerprint."""

from __future__ import annotations

from pathlib import Path

import pytest
from preflight_support import model_configs

from nova.config.schema import LoraConfig, ModelConfig, PhaseConfig, StageConfig, TrainingConfig
from nova.errors import ConfigError
from nova.preflight.checks_inputs import check_learning_rate
from nova.preflight.checks_memory import stage_settings
from nova.preflight.estimate import estimate_memory

CONFIG = model_configs()["llama-2-7b"]
MODEL = ModelConfig(base="m")


def _settings(method: str, **sections: object):  # type: ignore[no-untyped-def]
    stage = StageConfig(method=method, training=TrainingConfig(micro_batch_size=2), **sections)  # type: ignore[arg-type]
    return stage_settings(MODEL, LoraConfig(), stage, on_gpu=True, reference_adapter=True)


def test_each_method_is_sized_on_its_own_code_path() -> None:
    sft, dpo, kto, orpo, simpo = (_settings(m) for m in ("sft", "dpo", "kto", "orpo", "simpo"))
    assert (dpo.sequences, orpo.sequences, simpo.sequences, kto.sequences) == (4, 4, 4, 2)
    assert kto.loss_impl == orpo.loss_impl == "fused" and kto.lora_dropout == 0.0
    assert kto.loss_tokens == 2 * 512 and orpo.loss_tokens == 4 * 512
    short = _settings("kto", kto={"max_prompt_length": 64, "max_completion_length": 32})
    assert short.seq_len == 96 and short.loss_tokens == 2 * 32
    breakdowns = {m: estimate_memory(CONFIG, s).breakdown for m, s in
                  (("dpo", dpo), ("kto", kto), ("orpo", orpo), ("sft", sft))}
    assert breakdowns["kto"]["dpo_reference"] == breakdowns["dpo"]["dpo_reference"] > 0  # the stage-start copy
    assert breakdowns["orpo"]["dpo_reference"] == 0  # no reference at all
    assert breakdowns["orpo"]["activations"] == breakdowns["dpo"]["activations"] > breakdowns["kto"]["activations"]


@pytest.mark.parametrize(("method", "lr", "status"), [
    ("kto", 5e-6, "pass"), ("kto", 2e-4, "warn"), ("orpo", 5e-5, "pass"), ("orpo", 1e-3, "warn"),
    ("simpo", 1e-6, "pass"), ("simpo", 3e-4, "warn")])
def test_learning_rate_ranges_per_method(method: str, lr: float, status: str) -> None:
    check = check_learning_rate("lr", StageConfig(method=method, training=TrainingConfig(learning_rate=lr)))  # type: ignore[arg-type]
    assert check.status == status, check.message
    if status == "warn":
        assert f"LoRA {method}" in check.message


def test_kto_needs_two_replies_per_micro_batch_for_its_kl_term() -> None:
    with pytest.raises(ValueError, match="micro_batch_size of at least 2"):
        PhaseConfig(name="p", model=MODEL, method="kto", training=TrainingConfig(micro_batch_size=1))
    with pytest.raises(ValueError, match="micro_batch_size of at least 2"):
        StageConfig(method="kto", training=TrainingConfig(micro_batch_size=1))
    StageConfig(method="kto", kto={"loss_type": "apo_zero_unpaired"}, training=TrainingConfig(micro_batch_size=1))


def test_method_sections_are_strict_and_single_stage_keys_conflict_with_stages(tmp_path: Path) -> None:
    from nova.config import load_yaml_config

    path = tmp_path / "c.yaml"
    path.write_text("name: p\nmodel: {base: m}\nmethod: simpo\nsimpo: {beta: 2.0, gama: 1.0}\n")
    with pytest.raises(ConfigError, match="gama"):
        load_yaml_config(path)
    path.write_text("name: p\nmodel: {base: m}\nkto: {beta: 0.2}\nstages: [{method: kto}]\n")
    with pytest.raises(ConfigError, match="kto"):
        load_yaml_config(path)


def test_the_method_section_is_in_the_fingerprint() -> None:
    from nova.config.load import LoadedConfig
    from nova.plan import make_plan
    from nova.train.fingerprint import FingerprintInputs, mismatch, phase_fingerprints

    def fingerprint(**kto: object):  # type: ignore[no-untyped-def]
        phase = PhaseConfig(name="p", model=MODEL, method="kto", kto=kto)  # type: ignore[arg-type]
        planned = make_plan(LoadedConfig(Path("p.yaml"), phase, {})).phases[0]
        return phase_fingerprints(planned, FingerprintInputs("id", "bf16", ["key"], []))[0]

    old, new = fingerprint(beta=0.1), fingerprint(beta=0.2)
    assert old.values["kto.beta"] == 0.1 and "dpo.beta" not in old.values
    problem = mismatch("stage p/kto: checkpoint", Path("c"), old, new, allow_adjust=True)
    assert problem is not None and [p.where for p in problem.problems] == ["kto.beta"]


def test_auto_fit_keeps_two_replies_in_a_kto_micro_batch() -> None:
    from dataclasses import replace

    from nova.preflight.estimate import CALIBRATED, estimate_for_shape, model_shape, with_batch
    from nova.preflight.fit import DEFAULT_MARGIN, fit_batch

    shape = model_shape(CONFIG)
    four = replace(_settings("kto"), micro_batch_size=4)
    budget = estimate_for_shape(shape, with_batch(four, 1, True), CALIBRATED).upper_with(DEFAULT_MARGIN)
    assert fit_batch(shape, four, 2, budget).micro_batch_size == 1  # just room for one sequence
    kto = fit_batch(shape, four, 2, budget, min_micro=2)
    assert kto.micro_batch_size == 2 and not kto.fits and "micro_batch_size 2" in kto.reason
    assert StageConfig(method="kto").min_micro_batch == 2 and StageConfig(method="dpo").min_micro_batch == 1
