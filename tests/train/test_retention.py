"""The KL term toward a phase's start composition (retention.kl_weight), on the tiny model.

The start composition is the same PeftModel with the phase's trainable adapter switched off, so:
with the trainable adapter at its initialization (LoRA B = 0) the KL is exactly 0; once it moves,
the KL is positive, its gradient reaches the trainable adapter only, and rows not marked as
replayed are untouched (their loss is what it is without the term).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nova.config.schema import LoraConfig


@pytest.fixture()
def chained(tiny_model_dir: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The tiny model with a frozen, non-trivial 'earlier' adapter and a fresh trainable one."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from nova.model.adapters import add_trainable, peft_lora_config
    from nova.runs.record import AdapterRef

    torch.manual_seed(0)
    earlier = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                             peft_lora_config(LoraConfig(r=4, alpha=8, dropout=0.0)))
    with torch.no_grad():
        for name, p in earlier.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    earlier.save_pretrained(tmp_path / "earlier")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = add_trainable(base, LoraConfig(r=4, alpha=8, dropout=0.0), [AdapterRef("earlier", tmp_path / "earlier")])
    return model


def _batch():  # type: ignore[no-untyped-def]
    import torch

    ids = torch.tensor([[5, 9, 13, 17, 21, 25, 29, 33], [6, 10, 14, 18, 22, 26, 30, 34]])
    labels = ids.clone()
    labels[:, :3] = -100
    return {"input_ids": ids, "labels": labels, "replay_mask": torch.tensor([[1] * 8, [0] * 8])}


def _loss(model, batch, weight: float):  # type: ignore[no-untyped-def]
    from nova.train.methods.loss import StartModel, attach_start_model, install_sft_loss, sft_loss

    causal_lm = model.get_base_model()
    install_sft_loss(causal_lm)
    attach_start_model(causal_lm, StartModel(model, ("earlier",), weight) if weight else None)
    return sft_loss(model, batch)


def test_kl_is_zero_at_the_start_and_positive_once_the_adapter_moves(chained) -> None:  # type: ignore[no-untyped-def]
    import torch

    batch = _batch()
    assert float(_loss(chained, batch, 1.0) - _loss(chained, batch, 0.0)) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        for name, p in chained.named_parameters():
            if "lora_B" in name and ".default." in name:
                p.normal_(0, 0.2)
    plain = _loss(chained, batch, 0.0)
    with_kl = _loss(chained, batch, 1.0)
    assert float(with_kl - plain) > 1e-4
    with_kl.backward()
    grads = {n: p.grad for n, p in chained.named_parameters() if p.grad is not None}
    assert grads and all(".default." in n for n in grads)  # only the trainable adapter learns
    assert chained.base_model.active_adapters == ["earlier", "default"]  # the start view was undone


def test_rows_not_replayed_carry_no_kl(chained) -> None:  # type: ignore[no-untyped-def]
    import torch

    with torch.no_grad():
        for name, p in chained.named_parameters():
            if "lora_B" in name and ".default." in name:
                p.normal_(0, 0.2)
    batch = _batch()
    batch["replay_mask"] = torch.zeros_like(batch["replay_mask"])
    assert float(_loss(chained, batch, 5.0)) == pytest.approx(float(_loss(chained, batch, 0.0)), abs=1e-6)


def test_kl_without_replay_is_a_config_error() -> None:
    from pydantic import ValidationError

    from nova.config.schema import RetentionConfig

    with pytest.raises(ValidationError, match=r"set retention.replay > 0 too"):
        RetentionConfig(kl_weight=0.5)
