"""The trainable adapter stays in the compute dtype through a TRL trainer's construction (nova.model.adapters)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nova.model.adapters import keep_trainable_dtype


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


def test_fp32_compute_gets_its_exact_tensors_back(tiny_model_dir: Path) -> None:
    import torch

    model = _peft(tiny_model_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with keep_trainable_dtype(model, torch.float32):
        _trl_cast(model)
    for name, p in model.named_parameters():
        if name in before:
            assert p.dtype == torch.float32 and torch.equal(p.detach(), before[name]), name


def test_bf16_compute_keeps_trls_bf16_adapter(tiny_model_dir: Path) -> None:
    import torch

    model = _peft(tiny_model_dir)
    with keep_trainable_dtype(model, torch.bfloat16):
        _trl_cast(model)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.bfloat16}
