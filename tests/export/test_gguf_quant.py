"""llama.cpp's presets: which tensor gets which type (llama-quant.cpp's rules), and llama.cpp's quantizer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import run_nova
from nova.errors import NovaError


def test_q4_k_m_and_q5_k_m_give_more_bits_where_llama_cpp_does() -> None:
    from nova.export.gguf_quant import preset_type, use_more_bits

    more = [i for i in range(32) if use_more_bits(i, 32)]
    assert more == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]  # first/last eighth, every third
    for i in range(32):
        v = preset_type(f"blk.{i}.attn_v.weight", 4096, "q4_k_m", 32, False)
        down = preset_type(f"blk.{i}.ffn_down.weight", 14336, "q4_k_m", 32, False)
        assert v == down == ("Q6_K" if i in more else "Q4_K")
        assert preset_type(f"blk.{i}.attn_v.weight", 4096, "q5_k_m", 32, False) == ("Q6_K" if i in more else "Q5_K")
        assert preset_type(f"blk.{i}.attn_q.weight", 4096, "q4_k_m", 32, False) == "Q4_K"
        assert preset_type(f"blk.{i}.ffn_gate.weight", 4096, "q6_k", 32, False) == "Q6_K"
        assert preset_type(f"blk.{i}.attn_v.weight", 4096, "q4_0", 32, False) == "Q4_0"
    for preset in ("q4_0", "q4_k_m", "q5_k_m", "q6_k"):
        assert preset_type("output.weight", 4096, preset, 32, False) == "Q6_K"
        assert preset_type("token_embd.weight", 4096, preset, 32, True) == "Q6_K"  # tied: the output
    assert preset_type("token_embd.weight", 4096, "q4_k_m", 32, False) == "Q4_K"
    assert preset_type("token_embd.weight", 4096, "q4_0", 32, False) == "Q4_0"


def test_rows_that_are_not_whole_blocks_fall_back_as_llama_cpp_does() -> None:
    from nova.export.gguf_quant import fallback, preset_type

    # SmolLM2-135M: hidden 576 is 2.25 blocks of 256; its ffn_down rows (1536) are whole blocks.
    assert preset_type("blk.5.attn_q.weight", 576, "q4_k_m", 30, True) == "Q5_0"
    assert preset_type("blk.4.attn_v.weight", 576, "q5_k_m", 30, True) == "Q5_1"
    assert preset_type("blk.0.attn_v.weight", 576, "q4_k_m", 30, True) == "Q8_0"  # Q6_K -> Q8_0
    assert preset_type("blk.4.ffn_down.weight", 1536, "q4_k_m", 30, True) == "Q4_K"
    assert preset_type("token_embd.weight", 576, "q4_k_m", 30, True) == "Q8_0"
    assert preset_type("output.weight", 576, "q4_0", 30, False) == "Q8_0"
    assert fallback("Q4_0", 48) == "F16" and fallback("Q4_K", 80) == "F16" and fallback("Q6_K", 512) == "Q6_K"


def test_llama_cpp_quantizer_matches_the_reference_where_gguf_has_one() -> None:
    import gguf
    import numpy as np

    from nova.export.gguf_quant import quantizer

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 512)).astype(np.float32)  # more rows than one chunk
    qt = gguf.GGMLQuantizationType
    q = quantizer()
    for kind in (qt.Q4_0, qt.Q5_0, qt.Q8_0):
        assert np.array_equal(q.quantize(x, kind), gguf.quants.quantize(x, kind)), kind.name
    for kind, rmse in ((qt.Q4_K, 0.08), (qt.Q5_K, 0.04), (qt.Q6_K, 0.02)):
        back = gguf.quants.dequantize(q.quantize(x, kind), kind)
        assert back.shape == x.shape and float(np.sqrt(((back - x) ** 2).mean())) < rmse, kind.name


def test_a_preset_without_llama_cpp_is_one_clear_line(tiny_model_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from nova.export import gguf_quant
    from nova.export.gguf_export import export_gguf

    fake = tmp_path / "site" / "xllamacpp"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('not here')\n")
    gguf_quant.quantizer.cache_clear()
    monkeypatch.setattr(sys, "path", [str(fake.parent), *sys.path])
    for name in [m for m in sys.modules if m.startswith("xllamacpp")]:
        monkeypatch.delitem(sys.modules, name)
    try:
        with pytest.raises(NovaError, match=r"--outtype q4_k_m needs llama.cpp's quantizer .*pip install xllamacpp"):
            export_gguf(tiny_model_dir, tmp_path / "x.gguf", outtype="q4_k_m")
    finally:
        gguf_quant.quantizer.cache_clear()
    assert not (tmp_path / "x.gguf").exists()
    result = run_nova("export", "--model", str(tiny_model_dir), "--out", str(tmp_path / "y.gguf"), "--outtype",
                      "q5_k_m", env={"PYTHONPATH": str(fake.parent)})
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: --outtype q5_k_m needs llama.cpp's quantizer")
