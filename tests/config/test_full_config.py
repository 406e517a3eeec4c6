"""adapter: full in the schema, the plan, the run record and the fingerprint (no model loads here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nova.config.load import load_yaml_config
from nova.config.schema import PhaseConfig
from nova.errors import ConfigError
from nova.plan import make_plan

MODEL = {"base": "models/m", "quantization": "none"}


def load(tmp: Path, data: dict) -> object:
    path = tmp / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_yaml_config(path)


def problem(tmp: Path, data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp, data)
    text = "\n".join(p.message for p in info.value.problems)
    assert "\n" not in text.strip(), text  # one problem, one line
    return text


def test_default_is_lora_and_full_needs_an_unquantized_base(tmp_path: Path) -> None:
    assert PhaseConfig(name="p", model=MODEL).adapter == "lora"
    text = problem(tmp_path, {"name": "p", "adapter": "full", "model": {"base": "models/m"}})
    assert "not a nf4 base" in text and "set model.quantization: none" in text
    assert PhaseConfig(name="p", adapter="full", model=MODEL).adapter == "full"


def test_full_refuses_a_lora_section_and_methods_it_cannot_run(tmp_path: Path) -> None:
    text = problem(tmp_path, {"name": "p", "adapter": "full", "model": MODEL, "lora": {"r": 16}})
    assert "remove the lora section" in text
    text = problem(tmp_path, {"name": "p", "adapter": "full", "model": MODEL,
                              "stages": [{"method": "sft"}, {"method": "orpo"}]})
    assert "method orpo is not available with adapter: full" in text and "use adapter: lora" in text
    text = problem(tmp_path, {"output_dir": str(tmp_path / "o"), "phases": [
        {"name": "a", "model": MODEL},
        {"name": "b", "adapter": "full", "start_from": "a", "retention": {"replay": 0.2, "kl_weight": 0.1}}]})
    assert "retention.kl_weight" in text


def test_a_full_phase_in_a_pipeline_checks_the_inherited_base(tmp_path: Path) -> None:
    text = problem(tmp_path, {"output_dir": str(tmp_path / "o"), "phases": [
        {"name": "a", "adapter": "full", "model": {"base": "models/m"}}]})
    assert "set model.quantization: none" in text
    text = problem(tmp_path, {"output_dir": str(tmp_path / "o"), "phases": [
        {"name": "a", "model": MODEL}, {"name": "b", "start_from": "a"},
        {"name": "c", "adapter": "full", "start_from": "b"}]})
    assert "starts from LoRA phase(s) a, b" in text and "nova merge" in text


def test_the_plan_bases_later_phases_on_the_last_full_phase(tmp_path: Path) -> None:
    out = tmp_path / "o"
    loaded = load(tmp_path, {"output_dir": str(out), "phases": [
        {"name": "a", "adapter": "full", "model": MODEL},
        {"name": "b", "start_from": "a"},
        {"name": "c", "start_from": "b"},
        {"name": "d", "adapter": "full", "start_from": "a"},
        {"name": "e", "start_from": "d"}]})
    phases = {p.name: p for p in make_plan(loaded).phases}  # type: ignore[arg-type]
    assert phases["a"].full and phases["a"].base_model.base == "models/m" and phases["a"].chain == ()
    assert phases["b"].base_model.base == str(out / "a" / "model") and phases["b"].chain == ()
    assert [n for n, _ in phases["c"].chain] == ["b"] and phases["c"].base_model.base == str(out / "a" / "model")
    assert phases["d"].full and phases["d"].base_model.base == str(out / "a" / "model")
    assert phases["e"].base_model.base == str(out / "d" / "model")
    assert phases["b"].model.base == "models/m"  # preflight sizes the configured architecture
    with pytest.raises(Exception, match="phase 'a' has not finished"):
        phases["c"].chain_refs()


def test_the_run_record_of_a_full_phase_reads_back(tmp_path: Path) -> None:
    from nova.runs.layout import RunDir
    from nova.runs.record import read_run, resolved_config, write_run_config

    phase = PhaseConfig(name="p", adapter="full", model=MODEL)
    run = RunDir(tmp_path / "p")
    run.path.mkdir()
    data = resolved_config(phase, phase.model, [])  # type: ignore[arg-type]
    assert "lora" not in data and data["adapter"] == "full"
    write_run_config(run, data)
    record = read_run(run.path)
    assert record.full
    with pytest.raises(Exception, match="has no model/"):
        record.require_model()


def test_the_adapter_kind_is_part_of_the_fingerprint(tmp_path: Path) -> None:
    from nova.runs.fingerprint import differences
    from nova.train.fingerprint import FingerprintInputs, phase_fingerprints

    def fingerprint(adapter: str):  # type: ignore[no-untyped-def]
        loaded = load(tmp_path, {"name": "p", "adapter": adapter, "model": MODEL, "output_dir": str(tmp_path / "r")})
        planned = make_plan(loaded).phases[0]  # type: ignore[arg-type]
        return phase_fingerprints(planned, FingerprintInputs("id", "float32", ["key"], []))[0]

    full, lora = fingerprint("full"), fingerprint("lora")
    assert full.values["adapter"] == "full" and not any(k.startswith("lora.") for k in full.values)
    assert "adapter" not in lora.values and "lora.r" in lora.values  # LoRA fingerprints are as before
    keys = {k for k, _, _ in differences(lora, full)}
    assert "adapter" in keys and "lora.r" in keys


def test_the_shipped_full_example_plans_a_lora_phase_on_the_full_model() -> None:
    root = Path(__file__).resolve().parents[2]
    plan = make_plan(load_yaml_config(root / "configs" / "full.yaml"))
    chat, prefs = plan.phases
    assert chat.full and not prefs.full and prefs.start_model is not None and prefs.start_model[0] == "chat"
