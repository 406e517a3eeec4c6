"""nova's per-sequence SDPA (nova.model.attention): each packed sequence attends only to itself, a
sliding window stays a window, and everything else is transformers' SDPA unchanged."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from nova.model.attention import VARLEN_SDPA, register_varlen_sdpa, sequence_bounds


def _qkv(n: int, heads: int = 4, kv_heads: int = 2, dim: int = 8) -> tuple[Any, Any, Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, heads, n, dim, generator=g), torch.randn(1, kv_heads, n, dim, generator=g),
            torch.randn(1, kv_heads, n, dim, generator=g))


def _reference(q: Any, k: Any, v: Any, allowed: Any) -> Any:
    """Plain softmax attention over an explicit [n, n] allowed-pairs matrix; [1, n, heads, dim]."""
    import torch

    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~allowed, float("-inf"))
    return (torch.softmax(scores, dim=-1) @ v).transpose(1, 2)


def _allowed(lengths: list[int], window: int | None = None) -> Any:
    import torch

    seq = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
    pos = torch.cat([torch.arange(n) for n in lengths])
    i = torch.arange(len(seq))
    ok = (seq[:, None] == seq[None, :]) & (i[:, None] >= i[None, :])
    if window is not None:
        ok &= (pos[:, None] - pos[None, :]) < window
    return ok


def _positions(lengths: list[int]) -> Any:
    import torch

    return torch.cat([torch.arange(n) for n in lengths])[None]


def _attend(q: Any, k: Any, v: Any, mask: Any = None, **kwargs: Any) -> Any:
    import transformers

    register_varlen_sdpa()
    fn = transformers.AttentionInterface._global_mapping[VARLEN_SDPA]
    module = SimpleNamespace(num_key_value_groups=q.shape[1] // k.shape[1], is_causal=True)
    return fn(module, q, k, v, mask, scaling=q.shape[-1] ** -0.5, **kwargs)[0]


def test_sequence_bounds_follow_position_restarts() -> None:
    import torch

    assert sequence_bounds(_positions([3, 2, 4]), 1) == [[(0, 3), (3, 5), (5, 9)]]
    assert sequence_bounds(torch.tensor([[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]), 2) == [[(0, 3), (3, 5)], [(0, 2), (2, 5)]]


@pytest.mark.parametrize("window", [None, 3])
def test_packed_sequences_attend_only_to_themselves(window: int | None) -> None:
    import torch

    lengths = [5, 7, 2]
    q, k, v = _qkv(sum(lengths))
    out = _attend(q, k, v, position_ids=_positions(lengths), sliding_window=window)
    torch.testing.assert_close(out, _reference(q, k, v, _allowed(lengths, window)), rtol=1e-5, atol=1e-6)


def test_a_padding_mask_or_a_kv_cache_goes_to_plain_sdpa() -> None:
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q, k, v = _qkv(6)
    module = SimpleNamespace(num_key_value_groups=2, is_causal=True)
    mask = torch.ones(1, 1, 6, 6, dtype=torch.bool).tril()
    mask[..., :2] = False
    packed_positions = _positions([3, 3])
    ours = _attend(q, k, v, mask, position_ids=packed_positions)
    torch.testing.assert_close(ours, sdpa_attention_forward(module, q, k, v, mask, scaling=8 ** -0.5)[0])
    step = _attend(q[:, :, -1:], k, v, position_ids=torch.tensor([[5]]))  # decoding: one query, six keys
    torch.testing.assert_close(step, sdpa_attention_forward(module, q[:, :, -1:], k, v, None, scaling=8 ** -0.5)[0])


def test_bounds_are_read_again_for_a_new_position_tensor() -> None:
    import torch

    lengths = [4, 4]
    q, k, v = _qkv(8)
    first = _attend(q, k, v, position_ids=_positions(lengths))
    torch.testing.assert_close(first, _reference(q, k, v, _allowed(lengths)), rtol=1e-5, atol=1e-6)
    other = [2, 6]
    again = _attend(q, k, v, position_ids=_positions(other))  # a new tensor: its own boundaries
    torch.testing.assert_close(again, _reference(q, k, v, _allowed(other)), rtol=1e-5, atol=1e-6)


def test_generation_with_the_varlen_attention_matches_sdpa(tiny_model_dir: Path) -> None:
    """Greedy decoding (a KV cache, with and without a padding mask) is SDPA's, token for token."""
    import torch
    from transformers import AutoModelForCausalLM

    register_varlen_sdpa()
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    ids = torch.randint(3, 400, (2, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding in the second row
    outs = []
    for impl in ("sdpa", VARLEN_SDPA):
        model.set_attn_implementation(impl)
        outs.append([model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False),
                     model.generate(input_ids=ids[:1], max_new_tokens=8, do_sample=False)])
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
