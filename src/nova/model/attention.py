"""Variable-length SDPA: attention over packed rows that scores each sequence on its own.

A padding-free row holds several sequences one after the other, with ``position_ids`` restarting
at 0 for each. flash-attention's varlen kernel takes those boundaries as sequence lengths. SDPA
(the kernel on CPUs and on GPUs without flash-attention) takes only a mask, so transformers builds
a block-diagonal mask over the whole row: every pair of positions in the row is scored and the
cross-sequence pairs are thrown away (a row of 4 sequences of 250 tokens scores 1000 x 1000 pairs
where 4 x 250 x 250 are needed), and the mask itself is rows x rows booleans.

``nova_sdpa_varlen`` is registered with transformers' AttentionInterface: on a packed row with no
attention mask it finds the sequence boundaries from the position ids (as transformers'
``find_packed_sequence_indices`` does) and runs causal SDPA once per sequence (a sliding window,
where a layer has one, becomes that sequence's banded mask). Anything else (a padding mask,
decoding with a KV cache) goes to transformers' own SDPA function unchanged, so evaluation and
generation behave exactly as with ``sdpa``. Whether the result equals the sequences run one by
one is still checked per model before it is used (nova.train.machinery.batching.packing_is_exact).
"""

from __future__ import annotations

import itertools
import weakref
from typing import Any

from nova.lazy import require

VARLEN_SDPA = "nova_sdpa_varlen"
# The bounds of the last position_ids seen: every layer of one forward gets the same tensor, so they are
# read once per forward (on a GPU, reading them is a device sync). A weak reference cannot match a new
# tensor that reuses a freed one's address.
_last_bounds: list[Any] = [None, None]


def register_varlen_sdpa() -> str:
    """Register the attention function and its mask function with transformers (idempotent); returns its name."""
    transformers = require("transformers")
    masking = transformers.masking_utils
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if VARLEN_SDPA in transformers.AttentionInterface._global_mapping:
        return VARLEN_SDPA

    def mask(*args: Any, attention_mask: Any = None, **kwargs: Any) -> Any:
        # A whole row without a padding mask (no cache before it): the attention function isolates the
        # sequences itself, so no rows x rows mask. Anything else (decoding) gets SDPA's own mask.
        fresh = kwargs.get("q_offset", 0) == 0 and kwargs.get("q_length") == kwargs.get("kv_length")
        if attention_mask is None and fresh:
            return None
        return masking.sdpa_mask(*args, attention_mask=attention_mask, **kwargs)

    def attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                  scaling: float | None = None, **kwargs: Any) -> tuple[Any, None]:
        position_ids = kwargs.get("position_ids")
        plain = (attention_mask is not None or position_ids is None or query.shape[2] != key.shape[2]
                 or query.shape[2] < 2 or not getattr(module, "is_causal", True)
                 or kwargs.get("position_bias") is not None or kwargs.get("s_aux") is not None)
        if plain:
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                          scaling=scaling, **kwargs)
        return _per_sequence(module, query, key, value, _bounds(position_ids, query.shape[0]), dropout, scaling,
                             kwargs.get("sliding_window"))

    transformers.AttentionInterface.register(VARLEN_SDPA, attention)
    masking.AttentionMaskInterface.register(VARLEN_SDPA, mask)
    return VARLEN_SDPA


def sequence_bounds(position_ids: Any, rows: int) -> list[list[tuple[int, int]]]:
    """(start, end) of every sequence in each row: a sequence starts wherever the position does not
    follow the previous one by 1 (a restart at 0, or padding that forms its own block)."""
    torch = require("torch")
    if position_ids.shape[0] != rows:
        position_ids = position_ids.expand(rows, -1)
    starts = torch.diff(position_ids, dim=-1) != 1
    out = []
    length = position_ids.shape[-1]
    for row in starts.cpu().tolist():
        cuts = [0, *[i + 1 for i, new in enumerate(row) if new], length]
        out.append(list(itertools.pairwise(cuts)))
    return out


def _bounds(position_ids: Any, rows: int) -> list[list[tuple[int, int]]]:
    ref, bounds = _last_bounds
    if ref is None or ref() is not position_ids or len(bounds) != rows:
        bounds = sequence_bounds(position_ids, rows)
        _last_bounds[:] = [weakref.ref(position_ids), bounds]
    return bounds


def _per_sequence(module: Any, query: Any, key: Any, value: Any, bounds_per_row: list[list[tuple[int, int]]],
                  dropout: float, scaling: float | None, window: int | None) -> tuple[Any, None]:
    """Causal SDPA on each sequence of each row; output laid out as transformers expects ([B, L, H, D])."""
    torch = require("torch")
    from transformers.integrations.sdpa_attention import repeat_kv

    f = torch.nn.functional
    groups = getattr(module, "num_key_value_groups", 1)
    rows = []
    for b, bounds in enumerate(bounds_per_row):
        parts = []
        for start, end in bounds:
            q, k, v = (t[b:b + 1, :, start:end] for t in (query, key, value))
            n = end - start
            band = None
            if window is not None and n > window:  # position j seen from i when i - window < j <= i
                i = torch.arange(n, device=q.device)
                band = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < window)
            gqa = groups > 1
            if band is not None and gqa:  # as transformers does: with a mask, CUDA's GQA path is the math kernel
                k, v, gqa = repeat_kv(k, groups), repeat_kv(v, groups), False
            parts.append(f.scaled_dot_product_attention(
                q, k, v, attn_mask=band, dropout_p=dropout, scale=scaling, is_causal=band is None and n > 1,
                enable_gqa=gqa))
        rows.append(torch.cat(parts, dim=2) if len(parts) > 1 else parts[0])
    out = torch.cat(rows, dim=0) if len(rows) > 1 else rows[0]
    return out.transpose(1, 2).contiguous(), None


def varlen_candidate(implementation: str | None) -> bool:
    """Attention that nova may replace by its per-sequence SDPA for packed rows: SDPA itself (what
    transformers picks without flash-attention). eager is left alone: a model that needs it (a
    softcap, attention weights) would not run in SDPA."""
    return implementation == "sdpa"


def switch_attention(model: Any, implementation: str) -> None:
    """Set the attention implementation of ``model`` (a PeftModel or a transformers model, possibly
    wrapped) for every later forward; registers nova's own first when it is the one asked for."""
    if implementation == VARLEN_SDPA:
        register_varlen_sdpa()
    inner = model.module if hasattr(model, "module") else model
    base = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    base.set_attn_implementation(implementation)
