"""SFT: supervised fine-tuning on chats and text, the assistant replies (or every token) learned."""

from __future__ import annotations

from nova.methods.spec import LearningRates, MethodSpec

SPEC = MethodSpec(
    name="sft",
    summary="the assistant replies of chats, prompt/completion, alpaca or ShareGPT records, or plain text",
    records="sequences",
    # LoRA: 1e-4..2e-4 is where adapters learn in a few hundred steps (QLoRA paper, TRL's and axolotl's defaults);
    # 1e-5 is 20x too low and barely moves an adapter.
    lora_lr=LearningRates(5e-5, 1e-3, 2e-4),
    # Full fine-tuning moves every weight: about 1e-5..5e-5; a run at 5e-6 barely learned, above 1e-4 risks
    # breaking what the base knew.
    full_lr=LearningRates(1e-5, 1e-4, 2e-5),
    trainer="nova.train.methods.sft:build_sft_trainer",
)
