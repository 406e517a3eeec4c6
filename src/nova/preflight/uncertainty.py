"""How far off the estimate can be, by regime: the band a verdict of "fits" must leave room for.

An under-estimate is the worst error a preflight can make (it says "fits" and the run dies at
step 1), so the verdict compares the estimate *plus* this band with the free memory. The bands
are set from the errors on rows the constants were not fitted on (docs/memory.md): within 4% on
the fully specified long-context rows (Unsloth's HF baseline), within 15% on lit-gpt's rows,
wider on rows whose counter is not stated. Longer sequences, eager attention (scores grow with
the square of the row) and paths that no row has measured (nova's own SFT and DPO paths, until
the GPU kit measures them) get wider bands.
"""

from __future__ import annotations

from nova.preflight.settings import Settings

SHORT_SEQUENCE = 1024
LONG_SEQUENCE = 4096
BANDS = {"short": 0.10, "medium": 0.12, "long": 0.15}
EAGER_EXTRA = 0.05  # score matrices grow with the row squared; a mis-sized row moves them most
UNMEASURED_EXTRA = 0.05  # nova's own path has no measured row yet: scripts/gpu_check.py measures it


def regime(s: Settings) -> str:
    """short (sequences of up to 1024 tokens), medium (up to 4096) or long."""
    if s.seq_len <= SHORT_SEQUENCE:
        return "short"
    return "medium" if s.seq_len <= LONG_SEQUENCE else "long"


def band(s: Settings) -> float:
    """The relative uncertainty of the estimate for these settings."""
    width = BANDS[regime(s)]
    if s.attn_implementation == "eager":
        width += EAGER_EXTRA
    if s.loss_impl in ("nova", "fused"):
        width += UNMEASURED_EXTRA
    return width
