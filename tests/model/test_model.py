"""Model loading: dtype choice, real 4-bit quantization, and gradients that survive an eval pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from nova.config.schema import LoraConfig, ModelConfig
from nova.model.adapters import add_trainable
from nova.model.loading import choose_placement, cpu_has_native_bf16, load_base_model, load_tokenizer


def test_auto_dtype_on_cpu_follows_native_bf16_support(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import torch

    import nova.model.loading as loading

    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: True)
    assert choose_placement("auto").compute_dtype == torch.bfloat16
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: False)
    placement = choose_placement("auto")
    assert placement.device == "cpu" and placement.compute_dtype == torch.float32
    assert choose_placement("fp32").compute_dtype == torch.float32


def test_missing_pad_token_becomes_eos(tiny_model_dir: Path, tmp_path: Path) -> None:
    import json
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(tiny_model_dir, copy)
    cfg_file = copy / "tokenizer_config.json"
    data = json.loads(cfg_file.read_text())
    data.pop("pad_token", None)
    cfg_file.write_text(json.dumps(data))
    tok = load_tokenizer(ModelConfig(base=str(copy)))
    assert tok.pad_token == tok.eos_token


def _first_layer_lora_grads(model_dir: Path, eval_first: bool) -> list:
    import torch

    cfg = ModelConfig(base=str(model_dir))
    torch.manual_seed(0)
    model = add_trainable(load_base_model(cfg, choose_placement("auto")), LoraConfig(r=4, alpha=8, dropout=0.0), [])
    for name, p in model.named_parameters():  # nonzero B so gradients reach A through the base layers
        if "lora_B" in name:
            torch.manual_seed(hash(name) % 1000)
            p.data.normal_(0, 0.02)
    ids = torch.arange(3, 40).unsqueeze(0)
    if eval_first:
        model.eval()
        with torch.no_grad():
            model(input_ids=ids)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    return [p.grad.clone() for n, p in model.named_parameters() if "layers.0." in n and "lora_A" in n]


needs_native_bf16 = pytest.mark.skipif(
    not cpu_has_native_bf16(), reason="bitsandbytes repacks 4-bit weights (and loses their autograd) only on CPUs "
    "with AVX512-BF16/AMX; this CPU has neither, so there is nothing to guard against here")


@needs_native_bf16
def test_lower_layers_get_the_same_gradients_after_an_eval_pass(tiny_model_dir: Path) -> None:
    import torch

    fresh = _first_layer_lora_grads(tiny_model_dir, eval_first=False)
    after_eval = _first_layer_lora_grads(tiny_model_dir, eval_first=True)
    assert fresh and all(g.abs().max() > 0 for g in fresh)
    for a, b in zip(fresh, after_eval, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@needs_native_bf16
def test_without_the_guard_an_eval_pass_changes_the_gradients(tiny_model_dir: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The control: with nova's guard switched off the bug shows, so the test above can fail."""
    import torch

    import nova.model.loading as loading

    monkeypatch.setattr(loading, "keep_cpu_4bit_differentiable", lambda model: 0)
    fresh = _first_layer_lora_grads(tiny_model_dir, eval_first=False)
    after_eval = _first_layer_lora_grads(tiny_model_dir, eval_first=True)
    assert any(not torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(fresh, after_eval, strict=True))
