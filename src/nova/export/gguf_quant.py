"""llama.cpp's quantized GGUF types: which tensor gets which type, and llama.cpp's own quantizer.

``q4_0``, ``q4_k_m``, ``q5_k_m`` and ``q6_k`` are llama.cpp presets (``llama-quantize``'s file
types), not one type for every tensor. ``preset_type`` follows ``llama_tensor_get_type_impl`` in
llama.cpp's ``src/llama-quant.cpp`` for the architectures nova exports (no experts, not Falcon):

- ``output.weight`` (or ``token_embd.weight`` when the embeddings are tied, since llama.cpp then
  reuses it as the output): Q6_K, or Q8_0 when its rows are not whole 256-value blocks.
- ``attn_v`` and ``ffn_down`` of q4_k_m and q5_k_m: Q6_K in the layers where ``use_more_bits``
  holds (the first and last eighth of the layers, and every third layer between), else the
  preset's type.
- everything else that is 2-D: the preset's type (Q4_0, Q4_K, Q5_K, Q6_K); 1-D tensors stay F32.
- a row length that is not a multiple of the type's block falls back as llama.cpp does
  (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0); where even that does not fit, F16 (llama.cpp
  refuses those files for Q4_0 and Q8_0).

The bytes come from llama.cpp itself: ``ggml_quantize_chunk``, an exported symbol of the
``xllamacpp`` wheel's shared library (llama.cpp built for the CPU), called through ctypes, without
an importance matrix, exactly as ``llama-quantize`` without ``--imatrix``. ``gguf`` (the Python
package) has no K-quant quantizer. The wheel is an optional dependency: a preset without it is one
clear error before any model is loaded.
"""

from __future__ import annotations

import ctypes
import re
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

from nova.errors import NovaError
from nova.lazy import require

PRESETS = ("q4_0", "q4_k_m", "q5_k_m", "q6_k")
_DEFAULT = {"q4_0": "Q4_0", "q4_k_m": "Q4_K", "q5_k_m": "Q5_K", "q6_k": "Q6_K"}
FILE_TYPES = {"q4_0": "MOSTLY_Q4_0", "q4_k_m": "MOSTLY_Q4_K_M", "q5_k_m": "MOSTLY_Q5_K_M", "q6_k": "MOSTLY_Q6_K"}
_FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
BLOCK = {"Q4_0": 32, "Q5_0": 32, "Q5_1": 32, "Q8_0": 32, "Q4_K": 256, "Q5_K": 256, "Q6_K": 256}
INSTALL_HINT = "pip install xllamacpp (llama.cpp for the CPU, 34 MB), or pip install 'nova-tune[llamacpp]'"
ROWS_PER_CHUNK = 256  # rows per ggml_quantize_chunk call: the calls run in threads (ctypes drops the GIL)


def use_more_bits(layer: int, n_layer: int) -> bool:
    """llama.cpp's choice of the layers that get more bits (first and last eighth, every third between)."""
    return layer < n_layer // 8 or layer >= 7 * n_layer // 8 or (layer - n_layer // 8) % 3 == 2


def fallback(qtype: str, ncols: int) -> str:
    """The type a row of ``ncols`` values can hold: ``qtype``, llama.cpp's fallback, or F16."""
    if ncols % BLOCK[qtype] == 0:
        return qtype
    alt = _FALLBACK.get(qtype)
    return alt if alt is not None and ncols % BLOCK[alt] == 0 else "F16"


def _layer(name: str) -> int | None:
    match = re.match(r"blk\.(\d+)\.", name)
    return int(match.group(1)) if match else None


def preset_type(name: str, ncols: int, preset: str, n_layer: int, tied: bool) -> str:
    """The GGML type name llama.cpp's ``preset`` gives the 2-D tensor ``name`` (rows of ``ncols`` values)."""
    default = _DEFAULT[preset]
    layer = _layer(name)
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        chosen = "Q8_0" if ncols % BLOCK[default] else "Q6_K"
    elif (preset in ("q4_k_m", "q5_k_m") and layer is not None and use_more_bits(layer, n_layer)
          and (".attn_v.weight" in name or ".ffn_down" in name)):
        chosen = "Q6_K"
    else:
        chosen = default
    return fallback(chosen, ncols)


class Quantizer:
    """``ggml_quantize_chunk`` from the xllamacpp wheel, called through ctypes."""

    def __init__(self, lib: Any) -> None:
        self.lib = lib
        lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                            ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        lib.ggml_row_size.restype = ctypes.c_size_t
        lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
        lib.ggml_validate_row_data.restype = ctypes.c_bool
        lib.ggml_validate_row_data.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]

    def quantize(self, data: Any, qtype: Any) -> Any:
        """The quantized rows of the float32 array ``data`` (n-D, rows along the last axis) as uint8.

        Rows are quantized in chunks on two threads, each chunk with llama.cpp's validation.
        """
        np = require("numpy")
        src = np.ascontiguousarray(data, dtype=np.float32)
        ncols = int(src.shape[-1])
        nrows = int(src.size // ncols)
        row_size = int(self.lib.ggml_row_size(int(qtype), ncols))
        out = np.empty((nrows, row_size), dtype=np.uint8)

        def chunk(first: int) -> None:
            # ggml offsets both the source and the destination by ``start`` itself: pass the bases.
            count = min(ROWS_PER_CHUNK, nrows - first)
            written = self.lib.ggml_quantize_chunk(int(qtype), src.ctypes.data, out.ctypes.data, first * ncols,
                                                   count, ncols, None)
            rows = out[first:first + count]
            if written != count * row_size or not self.lib.ggml_validate_row_data(int(qtype), rows.ctypes.data,
                                                                                written):
                raise NovaError(f"llama.cpp's quantizer gave invalid {qtype.name} data",
                                hint="report this with the model; another --outtype avoids it")

        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(chunk, range(0, nrows, ROWS_PER_CHUNK)))
        return out.reshape(*src.shape[:-1], row_size)


@lru_cache(maxsize=1)
def quantizer(preset: str = "q4_k_m") -> Quantizer:
    """llama.cpp's quantizer, or a NovaError saying how to install it (checked before any model loads)."""
    try:
        module = __import__("xllamacpp.xllamacpp", fromlist=["xllamacpp"])
    except ImportError:
        raise NovaError(f"--outtype {preset} needs llama.cpp's quantizer (the xllamacpp package), which is not "
                        "installed", hint=INSTALL_HINT) from None
    try:
        lib = ctypes.CDLL(module.__file__)
        return Quantizer(lib)
    except (OSError, AttributeError) as exc:
        raise NovaError(f"the installed xllamacpp does not export llama.cpp's quantizer: {exc}",
                        hint="pip install -U xllamacpp") from None
