"""LoRA dropout on a CPU, with the mask drawn from 32-bit random integers instead of bernoulli_.

PEFT applies ``nn.Dropout`` to each adapted layer's input before ``lora_A``: seven times per
transformer block with all-linear LoRA, each on a [tokens x hidden] tensor. On a CPU torch's
``bernoulli_`` kernel is slow (4.4 ms for a 1000 x 576 tensor on a 2-core AVX2 machine, a third of
the time of the base layer's matmul): measured at 15% of a SmolLM2-135M QLoRA step. Filling int64
tensors with full-range random bits is about 6x faster per bit, and two 32-bit lanes of each draw
decide two elements: an element is kept when its lane is at or above a threshold, so the drop
probability is p to within 2^-32 (torch's own float uniform draws resolve 2^-24), and kept values
are scaled by 1 / (1 - p) as ``nn.Dropout`` scales them. Same distribution, same expectation, a
different random stream; the draws come from torch's default generator, which checkpoints save and
restore, so an interrupted run resumes onto the same masks.

The module is an ``nn.Dropout`` (TRL's ``disable_dropout`` finds it and sets ``p = 0``) and reads
``p`` at every call. GPUs keep ``nn.Dropout``: their Philox generator is fast already.
"""

from __future__ import annotations

from typing import Any

from nova.lazy import require

LANES = 2**32


def _dropout_class() -> type:
    torch = require("torch")

    class CPUDropout(torch.nn.Dropout):
        """``nn.Dropout`` whose training-mode mask comes from 32-bit random lanes (see the module doc)."""

        def forward(self, x: Any) -> Any:
            if not self.training or self.p == 0.0:
                return x
            if self.p >= 1.0:
                return x * 0.0
            return lane_dropout(x, self.p)

    return CPUDropout


def lane_dropout(x: Any, p: float) -> Any:
    """``x`` with each element zeroed with probability ``p`` (to within 2^-32), the rest scaled by 1 / (1 - p)."""
    torch = require("torch")
    n = x.numel()
    draws = torch.empty((n + 1) // 2, dtype=torch.int64, device=x.device).random_(-(2**63), None)
    lanes = draws.view(torch.int32)[:n].view(x.shape)
    threshold = round(p * LANES) - 2**31  # int32 lanes are uniform on [-2^31, 2^31)
    keep = lanes >= threshold
    return x.mul(keep).mul_(1.0 / (1.0 - p))


def use_cpu_dropout(model: Any) -> int:
    """Replace every LoRA dropout of ``model`` (PEFT's ``lora_dropout`` dicts) by CPUDropout; returns how many."""
    torch = require("torch")
    cls = _dropout_class()
    replaced = 0
    for module in model.modules():
        table = getattr(module, "lora_dropout", None)
        if not isinstance(table, torch.nn.ModuleDict):
            continue
        for name, drop in list(table.items()):
            if type(drop) is torch.nn.Dropout and drop.p > 0:
                table[name] = cls(drop.p)
                table[name].train(drop.training)
                replaced += 1
    return replaced
