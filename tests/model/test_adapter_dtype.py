"""The trainable adapter stays fp32 (master weights) through a TRL trainer's construction (nova.model.adapters)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nova.model.adapters import keep_trainable_fp32


def _peft(model_dir: Path) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.01)  # trained values: bf16 would round them
    return model


def _trl_cast(model: Any) -> None:
    """What TRL 1.16's trainers do to a 4-bit model when they are built."""
    import torch

    for _, param in model.named_parameters():
        if param.requires_grad:
            param.data = param.data.to(torch.bfloat16)


def test_the_trainable_adapter_gets_its_exact_fp32_tensors_back(tiny_model_dir: Path) -> None:
    import torch

    model = _peft(tiny_model_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with keep_trainable_fp32(model):
        _trl_cast(model)
    for name, p in model.named_parameters():
        if name in before:
            assert p.dtype == torch.float32 and torch.equal(p.detach(), before[name]), name
