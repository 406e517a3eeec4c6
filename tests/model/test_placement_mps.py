"""Apple Silicon: ``mps`` is chosen when there is no CUDA GPU, with the dtype torch runs there, and a
quantization it cannot run is refused in one line naming the fix. torch's mps answers are simulated
(this machine has no Apple GPU); the placement and the loading code around them are nova's own."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import nova.model.loading as loading
from nova.config.schema import ModelConfig
from nova.errors import NovaError
from nova.model.loading import Placement, choose_placement, load_base_model, mps_quantization_problem


def _mac(monkeypatch: pytest.MonkeyPatch, *, macos14: bool, mps: bool = True) -> None:
    fake_mps = SimpleNamespace(is_available=lambda: mps, is_macos_or_newer=lambda major, minor: macos14)
    fake = SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: False), backends=SimpleNamespace(mps=fake_mps),
                           bfloat16=torch.bfloat16, float16=torch.float16, float32=torch.float32)
    real = loading.require
    monkeypatch.setattr(loading, "require", lambda name: fake if name == "torch" else real(name))


def test_mps_is_chosen_with_bf16_from_macos_14(monkeypatch: pytest.MonkeyPatch) -> None:
    _mac(monkeypatch, macos14=True)
    assert choose_placement("auto") == Placement("mps", torch.bfloat16)
    assert choose_placement("fp32") == Placement("mps", torch.float32)
    assert choose_placement("auto").torch_device == "mps"


def test_before_macos_14_auto_is_fp32_and_bf16_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _mac(monkeypatch, macos14=False)
    assert choose_placement("auto") == Placement("mps", torch.float32)
    with pytest.raises(NovaError, match=r"bf16 on Apple's GPU \(mps\) only from macOS 14.*compute_dtype: auto"):
        choose_placement("bf16")


def test_a_mac_without_mps_trains_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _mac(monkeypatch, macos14=True, mps=False)
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: False)
    assert choose_placement("auto") == Placement("cpu", torch.float32)


def test_int8_on_mps_is_refused_before_anything_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded")

    transformers = loading.require("transformers")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", never)
    with pytest.raises(NovaError, match=r"int8 has no kernels for Apple's GPU \(mps\).*quantization: none"):
        load_base_model(ModelConfig(base="org/model", quantization="int8"), Placement("mps", torch.bfloat16),
                        source="org/model")


def test_nf4_on_mps_needs_a_bitsandbytes_with_an_mps_backend(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert mps_quantization_problem("none") is None
    assert mps_quantization_problem("nf4") is None  # the bitsandbytes installed here ships backends/mps
    old = tmp_path / "bitsandbytes"
    (old / "backends" / "cuda").mkdir(parents=True)
    monkeypatch.setattr(loading.importlib.util, "find_spec",
                        lambda name: SimpleNamespace(submodule_search_locations=[str(old)]))
    problem = mps_quantization_problem("nf4")
    assert problem is not None and "bitsandbytes has no backend for Apple's GPU (mps)" in problem[0]
    assert "model.quantization: none" in problem[1] and "smaller model" in problem[1]
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    assert "bitsandbytes is not installed" in mps_quantization_problem("nf4")[0]  # type: ignore[index]


def test_an_unquantized_model_is_moved_to_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    moved: list[str] = []

    class Model:
        def to(self, device: str) -> Model:
            moved.append(device)
            return self

    transformers = loading.require("transformers")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: Model())
    load_base_model(ModelConfig(base="org/model", quantization="none"), Placement("mps", torch.bfloat16),
                    source="org/model")
    assert moved == ["mps"]
