"""The logits and the loss: the peak of the LM head's forward and backward, per code path.

With a 150k vocabulary the logits of 8k tokens are 1.2 G elements: 2.3 GiB per 16-bit copy and
4.6 GiB per fp32 copy, so the path decides whether a long-context run fits. Bytes per logit
element alive at the worst moment (forward end or the start of backward):

* ``nova`` (``nova.train.methods.loss``): only trained positions reach the head. Up to 64M elements it
  is one matmul: 16-bit logits, the fp32 copy and log-softmax (10 B) in forward; in backward the
  saved log-softmax, its incoming gradient and the input gradient (12 B). Above, TRL's
  ``ChunkedLogProbFunction``: one [4096 x 32768] tile in the compute dtype, fp32 gradient of the
  hidden states, never the logits.
* ``fused`` (TRL's fused LM head, DPO): the same chunked kernel over completion positions.
* ``hf`` (transformers 5.x ``ForCausalLMLoss``): 16-bit logits, ``.float()``, cross-entropy:
  12 B in backward (the Trainer drops the output, so the 16-bit logits are freed by then).
* ``hf_legacy`` (transformers <= 4.46): the forward returns fp32 logits and the loss makes an
  fp32 shifted copy: 2 + 4 + 4 + 4 = 14 B in forward; 16 B in backward if the loop keeps the
  output alive (``logits_held``), else 12.
* ``hf_bf16_ce`` (Qwen v1 remote code): 16-bit logits, a 16-bit shifted copy and cross-entropy,
  which autocast runs in fp32 (12 B either way); without autocast (DeepSpeed fp16) all three
  stay 16-bit (6 B).
* ``chunked`` (lit-gpt): the 16-bit logit chunks stay alive and each chunk's 16-bit log-softmax
  is saved: 2 x 2 B.

Before the head, the final RMSNorm saves an fp32 copy of the last hidden states and its 16-bit
output feeds the head; after it, the gradient of the gathered or sliced hidden states is
scattered back to full length and the final norm runs backward in fp32.
"""

from __future__ import annotations

from nova.preflight.settings import Settings
from nova.preflight.shape import ModelShape

DIRECT_MAX_ELEMENTS = 64 * 1024 * 1024  # nova.train.methods.loss: larger problems use the chunked kernel
TOKEN_TILE = 4096  # trl.kernels.chunked_logprob.TOKEN_CHUNK_SIZE
VOCAB_TILE = 32768  # nova's CHUNK_VOCAB, TRL's default chunk for the fused head
# Without Triton (the CPU) TRL folds each tile with torch ops (``_forward_tile``/``_backward_tile``): fp32
# temporaries of the whole tile (the transformed logits, their shifted copy, exp, the gradient) live beside
# the projection buffer. Measured on the CPU (fp32, torch 2.13, TRL 1.16): 33 B per tile element in all,
# the buffer's 4 included, at 2048 and 4096 tokens x 49152 (docs/memory.md, "The CPU path").
TORCH_TILE_TEMP_BYTES = 29


def _chunked_head(shape: ModelShape, s: Settings, tokens: int) -> float:
    """TRL's chunked log-prob kernel: one projection tile plus the fp32 gradient of the hidden states."""
    per_element = s.compute_bytes + (TORCH_TILE_TEMP_BYTES if s.device == "cpu" else 0)
    tile = min(tokens, TOKEN_TILE) * min(shape.vocab, VOCAB_TILE) * per_element
    return tile + (4 + s.compute_bytes) * shape.hidden * tokens


def _per_element(s: Settings) -> float:
    """Bytes per logit element at the head's peak for the paths that materialize the logits."""
    d = s.compute_bytes
    if s.loss_impl == "hf":
        return max(d + 8, 12 + (d if s.logits_held else 0))
    if s.loss_impl == "hf_legacy":
        return max(d + 12, 16 if s.logits_held else 12)
    if s.loss_impl == "hf_bf16_ce":  # cross-entropy autocasts to fp32, else it runs in 16-bit
        return max(2 * d + 8, 12) if s.autocast else 3 * d
    return 2 * d  # chunked (lit-gpt)


def head_bytes(shape: ModelShape, s: Settings) -> float:
    """The LM head and the loss at their peak (without the final norm)."""
    n, v, d = s.head_tokens, shape.vocab, s.compute_bytes
    if s.loss_impl in ("nova", "fused"):
        gathered = d * shape.hidden * n  # hidden[mask]: a copy of the trained positions
        if s.loss_impl == "nova" and n * v <= DIRECT_MAX_ELEMENTS:
            return gathered + 12 * n * v + d * shape.hidden * n
        return gathered + _chunked_head(shape, s, n)
    return _per_element(s) * s.tokens * v


def loss_phase_bytes(shape: ModelShape, s: Settings) -> float:
    """On top of the stored activations around the loss: final norm, head peak, or the scatter back."""
    t, h, d = s.tokens, shape.hidden, s.compute_bytes
    final_norm = (4 + d) * h * t
    scatter_back = 2 * d * h * t + 3 * 4 * h * t  # full-length gradient, then the fp32 norm backward
    return final_norm + max(head_bytes(shape, s), scatter_back)
