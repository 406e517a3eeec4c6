"""A saved adapter names its base portably: a hub id or relative path as configured, else a name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nova.config.schema import LoraConfig, ModelConfig
from nova.errors import NovaError


@pytest.fixture(scope="module")
def peft_model(tiny_model_dir: Path) -> object:
    from transformers import AutoModelForCausalLM

    from nova.model.adapters import add_trainable

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))  # name_or_path: an absolute path
    return add_trainable(base, LoraConfig(r=2, alpha=4), [])


@pytest.mark.parametrize(("base", "expected"), [
    (None, "NAME"),  # what PEFT recorded (the absolute path it was loaded from) becomes the name
    ("ABS", "NAME"),
    ("models/tiny-model", "models/tiny-model"),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"),
])
def test_saved_adapter_carries_no_absolute_path(peft_model: object, tiny_model_dir: Path, tmp_path: Path,
                                                base: str | None, expected: str) -> None:
    from nova.model.adapters import save_trainable

    out = tmp_path / "adapter"
    save_trainable(peft_model, out, base=str(tiny_model_dir) if base == "ABS" else base)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == (tiny_model_dir.name if expected == "NAME" else expected)
    for file in out.iterdir():
        if file.suffix in (".json", ".md"):
            text = file.read_text()
            assert str(tiny_model_dir) not in text and str(tmp_path) not in text, file.name


def test_merge_accepts_an_adapter_saved_with_an_absolute_base(peft_model: object, tiny_model_dir: Path,
                                                              tmp_path: Path) -> None:
    from nova.merge.inputs import check_adapter_base
    from nova.model.adapters import save_trainable
    from nova.runs import AdapterRef

    save_trainable(peft_model, tmp_path / "adapter", base=str(tiny_model_dir))
    ref = AdapterRef("phase", tmp_path / "adapter")
    check_adapter_base(ref, ModelConfig(base=str(tiny_model_dir)), str(tiny_model_dir))
    with pytest.raises(NovaError, match="was trained on"):
        check_adapter_base(ref, ModelConfig(base="someone/else"), "someone/else")
