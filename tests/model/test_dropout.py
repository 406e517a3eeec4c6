"""nova's CPU LoRA dropout (nova.model.dropout): nn.Dropout's distribution and scaling, a faster draw."""

from __future__ import annotations

from pathlib import Path

import pytest

from nova.model.dropout import lane_dropout, use_cpu_dropout


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_drops_with_probability_p_and_scales_the_rest(p: float) -> None:
    import torch

    torch.manual_seed(0)
    n = 2_000_001  # odd: the last int64 draw is used for one element only
    out = lane_dropout(torch.full((n,), 2.0), p)
    dropped = float((out == 0).double().mean())
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(dropped - p) < 5 * sigma
    kept = out[out != 0]
    assert torch.all(kept == torch.tensor(2.0 / (1 - p)))
    assert float(out.double().mean()) == pytest.approx(2.0, abs=10 * 2 * sigma / (1 - p))


def test_the_gradient_is_the_mask_times_the_scale_and_draws_follow_the_seed() -> None:
    import torch

    x = torch.randn(3, 50, 16, requires_grad=True)
    torch.manual_seed(7)
    y = lane_dropout(x, 0.2)
    y.sum().backward()
    keep = y != 0
    torch.testing.assert_close(x.grad, keep.float() / 0.8)
    torch.manual_seed(7)
    assert torch.equal(lane_dropout(x.detach(), 0.2), y.detach())


def test_peft_dropouts_are_replaced_and_still_obey_eval_and_p_zero(tiny_model_dir: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_dropout=0.1, target_modules="all-linear"))
    layers = sum(1 for m in model.modules() if hasattr(m, "lora_dropout"))
    assert use_cpu_dropout(model) == layers > 0
    drops = [m.lora_dropout["default"] for m in model.modules() if hasattr(m, "lora_dropout")]
    assert all(isinstance(d, torch.nn.Dropout) and type(d) is not torch.nn.Dropout for d in drops)
    x = torch.ones(4, 100)
    model.train()
    assert bool((drops[0](x) == 0).any())
    model.eval()
    assert torch.equal(drops[0](x), x)
    model.train()
    for d in drops:  # what TRL's disable_dropout does
        if isinstance(d, torch.nn.Dropout):
            d.p = 0.0
    assert torch.equal(drops[0](x), x)
