"""llama.cpp itself, in process, to check what nova writes: tokenize, logits, perplexity, greedy text.

The ``xllamacpp`` wheel (llama.cpp built for the CPU, an optional dependency) exports llama.cpp's
C API from its shared library; this module calls it through ctypes: ``llama_model_load_from_file``,
``llama_tokenize``, ``llama_decode`` with every position's logits, ``llama_adapter_lora_init`` and
``llama_set_adapters_lora`` for a GGUF LoRA adapter. The test suite and
``scripts/measure_gguf_types.py`` use it; so the figures in docs/export.md are llama.cpp's.

``llama_model_params`` and ``llama_context_params`` are passed by value and their layout changes
between llama.cpp versions, so they are opaque buffers larger than any version's struct, filled by
llama.cpp's own ``*_default_params``; only the leading ``n_ctx``, ``n_batch`` and ``n_ubatch``
(the first three fields since 2023) are set. Structs this large are returned and passed in memory
on x86-64 and arm64, so the spare bytes are never read.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from nova.errors import NovaError
from nova.lazy import require

_c = ctypes


class _Batch(ctypes.Structure):
    _fields_ = [("n_tokens", _c.c_int32), ("token", _c.POINTER(_c.c_int32)), ("embd", _c.POINTER(_c.c_float)),
                ("pos", _c.POINTER(_c.c_int32)), ("n_seq_id", _c.POINTER(_c.c_int32)),
                ("seq_id", _c.POINTER(_c.POINTER(_c.c_int32))), ("logits", _c.POINTER(_c.c_int8))]


class _Params(ctypes.Structure):
    _fields_ = [("raw", _c.c_uint64 * 128)]  # 1 KiB: larger than llama_model_params / llama_context_params


_LOG = ctypes.CFUNCTYPE(None, _c.c_int, _c.c_char_p, _c.c_void_p)
_QUIET = _LOG(lambda level, text, data: None)
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "llama_model_default_params": (_Params, []), "llama_context_default_params": (_Params, []),
    "llama_model_load_from_file": (_c.c_void_p, [_c.c_char_p, _Params]),
    "llama_init_from_model": (_c.c_void_p, [_c.c_void_p, _Params]),
    "llama_model_get_vocab": (_c.c_void_p, [_c.c_void_p]), "llama_vocab_n_tokens": (_c.c_int32, [_c.c_void_p]),
    "llama_tokenize": (_c.c_int32, [_c.c_void_p, _c.c_char_p, _c.c_int32, _c.POINTER(_c.c_int32), _c.c_int32,
                                    _c.c_bool, _c.c_bool]),
    "llama_token_to_piece": (_c.c_int32, [_c.c_void_p, _c.c_int32, _c.c_char_p, _c.c_int32, _c.c_int32, _c.c_bool]),
    "llama_batch_init": (_Batch, [_c.c_int32, _c.c_int32, _c.c_int32]), "llama_batch_free": (None, [_Batch]),
    "llama_decode": (_c.c_int32, [_c.c_void_p, _Batch]), "llama_get_logits": (_c.POINTER(_c.c_float), [_c.c_void_p]),
    "llama_set_n_threads": (None, [_c.c_void_p, _c.c_int32, _c.c_int32]),
    "llama_get_memory": (_c.c_void_p, [_c.c_void_p]), "llama_memory_clear": (None, [_c.c_void_p, _c.c_bool]),
    "llama_vocab_is_eog": (_c.c_bool, [_c.c_void_p, _c.c_int32]),
    "llama_model_chat_template": (_c.c_char_p, [_c.c_void_p, _c.c_char_p]),
    "llama_adapter_lora_init": (_c.c_void_p, [_c.c_void_p, _c.c_char_p]),
    "llama_set_adapters_lora": (_c.c_int32, [_c.c_void_p, _c.POINTER(_c.c_void_p), _c.c_size_t,
                                             _c.POINTER(_c.c_float)]),
    "llama_free": (None, [_c.c_void_p]), "llama_model_free": (None, [_c.c_void_p]),
    "llama_log_set": (None, [_LOG, _c.c_void_p]), "llama_backend_init": (None, []),
}


@lru_cache(maxsize=1)
def library() -> Any:
    """The llama.cpp library of the xllamacpp wheel with typed functions (NovaError when not installed)."""
    try:
        module = require("xllamacpp.xllamacpp")
    except NovaError:
        raise NovaError("llama.cpp (the xllamacpp package) is not installed",
                        hint="pip install xllamacpp, or pip install 'nova-tune[llamacpp]'") from None
    lib = ctypes.CDLL(module.__file__)
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    lib.llama_log_set(_QUIET, None)
    lib.llama_backend_init()
    return lib


@dataclass
class LlamaModel:
    """A GGUF loaded by llama.cpp with one context (optionally with a GGUF LoRA adapter applied)."""

    path: Path
    model: int
    ctx: int
    n_ctx: int

    @property
    def vocab(self) -> int:
        return library().llama_model_get_vocab(self.model)

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        """llama.cpp's token ids of ``text`` (special tokens written in the text are parsed)."""
        raw = text.encode("utf-8")
        buf = (_c.c_int32 * (len(raw) + 16))()
        n = library().llama_tokenize(self.vocab, raw, len(raw), buf, len(buf), add_special, parse_special)
        if n < 0:
            raise NovaError(f"llama.cpp could not tokenize {len(raw)} bytes with {self.path.name}")
        return list(buf[:n])

    def piece(self, token: int) -> str:
        buf = _c.create_string_buffer(256)
        n = library().llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
        return buf.raw[: max(n, 0)].decode("utf-8", errors="replace")

    def is_end_of_generation(self, token: int) -> bool:
        return bool(library().llama_vocab_is_eog(self.vocab, token))

    def chat_template(self) -> str | None:
        raw = library().llama_model_chat_template(self.model, None)
        return raw.decode("utf-8") if raw else None

    def _decode(self, ids: list[int], start: int, every: bool) -> Any:
        """Decode ``ids`` at positions ``start``..; logits of every position, or of the last only."""
        np = require("numpy")
        lib = library()
        if not ids or start + len(ids) > self.n_ctx:
            raise NovaError(f"{start + len(ids)} tokens do not fit the llama.cpp context of {self.n_ctx}")
        batch = lib.llama_batch_init(len(ids), 0, 1)
        try:
            for i, token in enumerate(ids):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, start + i, 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1 if every or i == len(ids) - 1 else 0
            batch.n_tokens = len(ids)
            if lib.llama_decode(self.ctx, batch) != 0:
                raise NovaError(f"llama.cpp failed to decode {len(ids)} tokens with {self.path.name}")
            rows = len(ids) if every else 1
            n_vocab = lib.llama_vocab_n_tokens(self.vocab)
            return np.ctypeslib.as_array(lib.llama_get_logits(self.ctx), shape=(rows, n_vocab)).copy()
        finally:
            lib.llama_batch_free(batch)

    def logits(self, ids: list[int]) -> Any:
        """float32 logits (len(ids) x vocab) of one sequence, every position, from a cleared cache."""
        lib = library()
        lib.llama_memory_clear(lib.llama_get_memory(self.ctx), True)
        return self._decode(ids, 0, every=True)

    def greedy(self, ids: list[int], max_new_tokens: int) -> list[int]:
        """Greedy continuation with the KV cache (stops after an end-of-generation token, included)."""
        lib = library()
        lib.llama_memory_clear(lib.llama_get_memory(self.ctx), True)
        last = self._decode(ids, 0, every=False)[-1]
        out: list[int] = []
        for _ in range(max_new_tokens):
            token = int(last.argmax())
            out.append(token)
            if self.is_end_of_generation(token) or len(out) == max_new_tokens:
                break
            last = self._decode([token], len(ids) + len(out) - 1, every=False)[-1]
        return out

    def nll(self, ids: list[int]) -> tuple[float, int]:
        """(summed negative log-likelihood in nats, predicted tokens) of ``ids`` (the first is context)."""
        np = require("numpy")
        logits = self.logits(ids).astype(np.float64)
        top = logits.max(axis=-1, keepdims=True)
        logz = (top[:, 0] + np.log(np.exp(logits - top).sum(axis=-1)))[:-1]
        picked = logits[np.arange(len(ids) - 1), ids[1:]]
        return float((logz - picked).sum()), len(ids) - 1

    def close(self) -> None:
        lib = library()
        if self.ctx:
            lib.llama_free(self.ctx)
        if self.model:
            lib.llama_model_free(self.model)
        self.ctx = self.model = 0


def load(path: str | Path, *, n_ctx: int = 512, lora: str | Path | None = None, threads: int = 2) -> LlamaModel:
    """Load a GGUF with llama.cpp (and a GGUF LoRA adapter at scale 1); NovaError when llama.cpp refuses it."""
    lib = library()
    model = lib.llama_model_load_from_file(str(path).encode(), lib.llama_model_default_params())
    if not model:
        raise NovaError(f"llama.cpp cannot load {path}", hint="the file is not a GGUF model llama.cpp reads")
    params = lib.llama_context_default_params()
    for offset in (0, 4, 8):  # n_ctx, n_batch, n_ubatch
        _c.c_uint32.from_buffer(params.raw, offset).value = n_ctx
    ctx = lib.llama_init_from_model(model, params)
    if not ctx:
        lib.llama_model_free(model)
        raise NovaError(f"llama.cpp cannot make a context for {path}")
    lib.llama_set_n_threads(ctx, threads, threads)
    loaded = LlamaModel(Path(path), model, ctx, n_ctx)
    if lora is not None:
        adapter = lib.llama_adapter_lora_init(model, str(lora).encode())
        if not adapter:
            loaded.close()
            raise NovaError(f"llama.cpp cannot load the LoRA adapter {lora} for {path}")
        adapters, scales = (_c.c_void_p * 1)(adapter), (_c.c_float * 1)(1.0)
        lib.llama_set_adapters_lora(ctx, adapters, 1, scales)
    return loaded


def perplexity(model: LlamaModel, sequences: list[list[int]]) -> float:
    """exp(mean NLL per predicted token) over ``sequences`` (each cut to the context)."""
    total, count = 0.0, 0
    for ids in sequences:
        nll, n = model.nll(ids[: model.n_ctx])
        total, count = total + nll, count + n
    return math.exp(total / max(count, 1))
