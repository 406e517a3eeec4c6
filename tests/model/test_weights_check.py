"""Damaged or mismatched model files are one clear line, found from their headers before any weight loads:
in training, infer and merge (model loading) and in preflight."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from nova.errors import NovaError
from nova.model.weights_check import check_adapter, check_model_dir, read_header


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _edit_config(model: Path, **changes: object) -> None:
    config = json.loads((model / "config.json").read_text())
    config.update(changes)
    (model / "config.json").write_text(json.dumps(config))


def test_a_cut_off_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = _copy(tiny_model_dir, tmp_path / "m")
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(NovaError, match=r"model.safetensors is cut off: \d+ of the \d+ bytes its header describes"):
        check_model_dir(model)


def test_an_oversized_file_and_an_absurd_header(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = _copy(tiny_model_dir, tmp_path / "m")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes() + b"\0" * 100)
    with pytest.raises(NovaError, match="100 bytes past the last tensor"):
        read_header(weights)
    weights.write_bytes(struct.pack("<Q", 10**15) + weights.read_bytes()[8:])
    with pytest.raises(NovaError, match=r"its header claims 1000000000000000 bytes"):
        read_header(weights)


def test_shapes_that_disagree_with_config_json(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = _copy(tiny_model_dir, tmp_path / "m")
    _edit_config(model, hidden_size=128)
    with pytest.raises(NovaError, match=r"describes embeddings of 471 x 128 .*the weights store 471 x 64") as caught:
        check_model_dir(model)
    assert "config.json looks edited" in (caught.value.hint or "")


def test_a_config_describing_a_model_far_larger_than_its_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = _copy(tiny_model_dir, tmp_path / "m")
    _edit_config(model, intermediate_size=10**9)
    with pytest.raises(NovaError, match=r"describes about 3.84e\+11 parameters; .* look wrong"):
        check_model_dir(model)


def test_an_unknown_architecture_with_its_own_code(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = _copy(tiny_model_dir, tmp_path / "m")
    _edit_config(model, model_type="evilnet", auto_map={"AutoModelForCausalLM": "modeling_evil.Evil"})
    with pytest.raises(NovaError, match=r"model_type 'evilnet' is not an architecture transformers knows and asks "
                                        r"to run its own code") as caught:
        check_model_dir(model)
    assert "hf.co" not in str(caught.value) and "trust_remote_code" in (caught.value.hint or "")
    check_model_dir(model, trust_remote_code=True)  # the user said to trust it: transformers decides


def test_the_intact_model_passes(tiny_model_dir: Path) -> None:
    check_model_dir(tiny_model_dir)


def test_loading_a_damaged_model_is_one_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    from nova.config.schema import ModelConfig
    from nova.model.loading import choose_placement, load_base_model

    model = _copy(tiny_model_dir, tmp_path / "m")
    (model / "model.safetensors").write_bytes((model / "model.safetensors").read_bytes()[:5000])
    with pytest.raises(NovaError, match="is cut off"):
        load_base_model(ModelConfig(base=str(model), quantization="none"), choose_placement("fp32"), str(model))


def test_a_chat_template_that_does_not_parse(tiny_model_dir: Path, tmp_path: Path) -> None:
    from nova.config.schema import ModelConfig
    from nova.model.loading import load_tokenizer

    model = _copy(tiny_model_dir, tmp_path / "m")
    (model / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }")
    with pytest.raises(NovaError, match=r"the chat template of .* does not parse \(line 1: unexpected '}'\)"):
        load_tokenizer(ModelConfig(base=str(model), quantization="none"))


def _adapter(path: Path, r: object, lora_a_rank: int = 8) -> Path:
    import numpy as np
    from safetensors.numpy import save_file

    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"r": r, "lora_alpha": 16, "peft_type": "LORA"}))
    save_file({"base_model.model.layers.0.q_proj.lora_A.weight": np.zeros((lora_a_rank, 64), np.float32)},
              str(path / "adapter_model.safetensors"))
    return path


def test_an_adapter_with_an_absurd_or_false_rank(tmp_path: Path) -> None:
    with pytest.raises(NovaError, match=r"the LoRA rank r=1000000000 is not a rank nova can load"):
        check_adapter(_adapter(tmp_path / "a", 10**9))
    with pytest.raises(NovaError, match=r"says r=16, but .*lora_A.weight in adapter_model.safetensors has rank 8"):
        check_adapter(_adapter(tmp_path / "b", 16))
    with pytest.raises(NovaError, match="is not a rank"):
        check_adapter(_adapter(tmp_path / "c", "8"))
    check_adapter(_adapter(tmp_path / "d", 8))


def test_preflight_checks_the_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    from nova.config.schema import ModelConfig
    from nova.preflight.checks_weights import check_weights
    from nova.preflight.model_source import resolve_model

    [good] = check_weights(resolve_model(str(tiny_model_dir)), ModelConfig(base=str(tiny_model_dir)))
    assert good.status == "pass"
    model = _copy(tiny_model_dir, tmp_path / "m")
    _edit_config(model, intermediate_size=10**9)
    [bad] = check_weights(resolve_model(str(model)), ModelConfig(base=str(model)))
    assert bad.status == "fail" and "look wrong" in bad.message and "config.json" in bad.fix
