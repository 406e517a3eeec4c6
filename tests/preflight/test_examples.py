"""configs/examples/: one short config per common model family, each validated and checked by preflight for the
GPU its name says (offline: the model's shape from nova's table of known architectures)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import ROOT
from nova.config import load_yaml_config
from nova.preflight import run_preflight

EXAMPLES = sorted((ROOT / "configs" / "examples").glob("*.yaml"))
FAMILIES = {"qwen3-1.7b-reasoning-16gb", "llama-3.1-8b-24gb", "mistral-7b-24gb", "phi-3.5-mini-16gb",
            "tinyllama-1.1b-12gb"}


def test_every_family_has_an_example() -> None:
    assert {p.stem for p in EXAMPLES} == FAMILIES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_fits_its_gpu_by_preflight(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the data paths are relative to the checkout
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    gib = re.search(r"(\d+)gb$", path.stem)
    assert gib, f"{path.name} says which GPU it is for"
    report = run_preflight(load_yaml_config(path), gpu_memory=f"{gib.group(1)}GiB")
    by_name = {c.name.split("[")[0]: c for c in report.checks}
    memory = [c for c in report.checks if c.name.startswith("memory")]
    assert memory and all(c.status == "pass" for c in memory), [c.message for c in memory]
    assert report.estimate is not None and report.estimate["total_bytes"] < int(gib.group(1)) * 2**30
    # offline the hub model is not downloaded (model fails, the template is skipped); everything else passes
    others = [c for c in report.checks if c.name.split("[")[0] not in ("model", "chat_template", "gpu")]
    assert all(c.status == "pass" for c in others), [(c.name, c.message) for c in others if c.status != "pass"]
    assert by_name["model"].message.endswith("memory estimated from nova's table of known architectures")


def test_a_holdout_of_fewer_than_a_handful_of_records_warns(tmp_path: Path, tiny_model_dir: Path) -> None:
    from data_fixtures import chat, write_jsonl

    data = write_jsonl(tmp_path / "d.jsonl", [chat(f"question {i}", f"answer {i}") for i in range(23)])
    config = tmp_path / "c.yaml"
    config.write_text(f"name: c\nmodel: {{base: {tiny_model_dir}, quantization: none}}\n"
                      f"data:\n  datasets: [{{path: {data}}}]\n  eval_split: 0.1\n")
    check = next(c for c in run_preflight(load_yaml_config(config)).checks if c.name.startswith("data"))
    assert check.status == "warn" and "21 training records, 2 held out" in check.message
    assert "noise" in check.message and "data.eval_split" in check.fix
    config.write_text(config.read_text().replace("eval_split: 0.1", "eval_split: 0.25"))
    check = next(c for c in run_preflight(load_yaml_config(config)).checks if c.name.startswith("data"))
    assert check.status == "pass" and "6 held out" in check.message
