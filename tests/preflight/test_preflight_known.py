"""Preflight estimates memory for popular hub models before they are downloaded."""

from __future__ import annotations

import pytest

from conftest import ROOT
from nova.config import load_yaml_config
from nova.preflight import run_preflight
from nova.preflight.model_source import known_architecture


def test_full_size_plan_is_estimated_offline_from_the_known_architecture(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    report = run_preflight(load_yaml_config("configs/doica.yaml"), gpu_memory="24GiB", check_data=False)
    memory = next(c for c in report.checks if c.name.startswith("memory"))
    assert memory.status == "pass" and "GiB" in memory.message
    assert 10 * 1024**3 < report.estimate["total_bytes"] < 24 * 1024**3
    small = run_preflight(load_yaml_config("configs/doica.yaml"), gpu_memory="8GiB", check_data=False)
    assert next(c for c in small.checks if c.name.startswith("memory")).status == "fail"


def test_known_architectures_have_the_fields_the_estimate_needs() -> None:
    for base in ("mistralai/Mistral-7B-Instruct-v0.3", "meta-llama/Llama-3.1-8B-Instruct"):
        cfg = known_architecture(base)
        assert cfg is not None
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                    "intermediate_size", "vocab_size"):
            assert key in cfg
    assert known_architecture("nobody/unknown-model") is None
