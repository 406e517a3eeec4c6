"""Published peak-memory measurements, each with the settings of the code path it was taken on.

Copied here so the project works without ``../shared``; ``added=True`` marks rows that are not
in ``../shared/calibration/vram-published.md`` and were read from the cited source directly.
Each row's settings say what that stack did (its loss path, attention kernel, adapter dtype,
autocast), because the same nominal run differs by gigabytes between stacks. Only rows measured
on transformers + PEFT + bitsandbytes with a known loss path are fitted (``role="fit"``); every
other row is held out and only checked. docs/memory.md lists each row and its error.

Metrics: ``allocated`` / ``reserved`` are torch's peak counters; ``total`` is what a card must
hold (reserved + CUDA context; the unit and counter of the source are noted where uncertain);
``capacity`` is a card size at which the source found the longest sequence that still fit, so
the estimate there should be at most the card and close to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from nova.files import GiB
from nova.preflight.settings import ALL_LINEAR, Settings

QV = ("q_proj", "v_proj")
Metric = Literal["allocated", "reserved", "total", "capacity"]


@dataclass(frozen=True)
class Row:
    """One published measurement and the settings it was taken with."""

    id: str
    model: str  # fixture name under tests/fixtures/model_configs/
    settings: Settings
    measured_bytes: float
    metric: Metric
    role: Literal["fit", "holdout"]
    source: str
    added: bool = False  # not in ../shared/calibration: found and cited here


def _b1(metric: Literal["allocated", "reserved"], value: float) -> Row:
    # Llama-3-8B-Instruct, PEFT + bnb 0.43.3 nf4 double-quant, r=8 all-linear, dropout 0.05, adapters
    # and AdamW states in bf16 (autocast_adapter_dtype=False), batch 2 padded alpaca-cleaned cut at 512
    # tokens, no checkpointing, bitsandbytes 0.43.3 (keeps each 4-bit linear's input), torchtune's loop
    # (no autocast) with cross-entropy on fp32 logits; peak
    # over the run, torchtune's logger in GB (1e9).
    settings = Settings("nf4", True, 2, 8, ALL_LINEAR, lora_dropout=0.05, lora_bytes=2, micro_batch_size=2,
                        seq_len=512, gradient_checkpointing=False, quant_saves_input=True, loss_impl="hf")
    return Row(f"B1-{metric}", "llama-3-8b", settings, value, metric, "fit",
               "BenjaminBossan/peft-experiments torchtune/llama3-qlora-single-device/log_peft_bnb-0.43.3.txt")


def _answerai(row_id: str, quant: Literal["nf4", "none"], batch: int, gib: float) -> Row:
    # fsdp_qlora train.py (transformers 4.38): r=64 all linear, dropout 0.1, pure bf16 (adapters too, no
    # autocast), sdpa without a mask (attention_mask=None), reentrant checkpointing, ctx 2048, dummy data,
    # bitsandbytes 0.43.
    # The forward returns fp32 logits plus a shifted fp32 copy, and the loop keeps the output through
    # backward. DDP rows hold a full copy per GPU (plus DDP's gradient buckets).
    settings = Settings(quant, False, 2, 64, ALL_LINEAR, lora_dropout=0.1, lora_bytes=2, micro_batch_size=batch,
                        seq_len=2048, reentrant=True, quant_saves_input=True, attention_masked=False,
                        loss_impl="hf_legacy", logits_held=True, ddp=True)
    return Row(row_id, "llama-2-7b", settings, gib * GiB, "reserved", "fit",
               "AnswerDotAI/fsdp_qlora benchmarks_03_2024.md (DDP, peak reserved GiB)")


def _litgpt(row_id: str, model: str, quant: Literal["nf4", "none"], dq: bool, gb: float, batch: int = 1) -> Row:
    # lit-gpt 8641822: its own model code (fused qkv, SDPA causal), r=8 on query+value, dropout 0.05,
    # bf16-true (adapters bf16, no autocast), longest alpaca sample 1304 tokens, no checkpointing,
    # chunked cross-entropy over 16-bit logit chunks, PagedAdamW (32-bit) when quantized; allocated / 1e9.
    optimizer = "paged_adamw_32bit" if quant == "nf4" else "adamw_torch"
    settings = Settings(quant, dq, 2, 8, QV, fused_qkv=True, lora_dropout=0.05, lora_bytes=2, micro_batch_size=batch,
                        seq_len=1304, gradient_checkpointing=False, quant_saves_input=True, optimizer=optimizer,
                        attention_masked=False, loss_impl="chunked")
    return Row(row_id, model, settings, gb * 1e9, "allocated", "holdout",
               "Lightning-AI/litgpt tutorials/resource-tables.md @ 8641822")


QWEN_LENGTHS = (256, 512, 1024, 2048, 4096, 8192)
# QwenLM/Qwen README @ 03cd81f "Profiling of Memory and Speed" (A100-80G, torch 2.0, flash attention 2,
# batch 1, gradient accumulation 8), memory in "G" (read as GiB; the counter is not stated).
QWEN_TABLE = {
    ("qwen-1_8b", "lora"): (6.7, 7.4, 8.4, 11.0, 16.2, 21.8),
    ("qwen-1_8b", "qlora"): (5.8, 6.0, 6.6, 7.8, 10.2, 15.8),
    ("qwen-7b", "lora"): (20.1, 20.4, 21.5, 23.8, 29.7, 36.6),
    ("qwen-7b", "qlora"): (11.5, 11.5, 12.3, 13.9, 16.9, 23.5),
    ("qwen-14b", "lora"): (34.6, 35.1, 35.3, 37.4, 42.5, 55.2),
    ("qwen-14b", "qlora"): (18.7, 18.4, 18.9, 19.9, 23.0, 27.9),
}


def _qwen(model: str, method: str, length: int, gib: float) -> Row:
    # QwenLM/Qwen finetune.py: HF Trainer with bf16 (autocast), PEFT LoRA r=64 on c_attn (fused q,k,v),
    # c_proj, w1, w2 with dropout 0.05 and fp32 adapters, gradient checkpointing, inputs padded to the
    # length, Qwen's remote code (bf16 logits, a shifted copy, cross-entropy under autocast). Q-LoRA: the
    # GPTQ Int4 chat model in fp16 with DeepSpeed ZeRO-2 (finetune_qlora_single_gpu.sh, ds_config_zero2.json:
    # buckets of 2e8; DeepSpeed's fp16 casts the model, adapters included, and runs without autocast);
    # prepare_model_for_kbit_training leaves GPTQ models in 16-bit (PEFT 0.5).
    qlora = method == "qlora"
    settings = Settings("gptq4" if qlora else "none", False, 2, 64, ALL_LINEAR, fused_qkv=True, lora_dropout=0.05,
                        lora_bytes=2 if qlora else 4, zero2_bucket=200_000_000 if qlora else 0,
                        micro_batch_size=1, seq_len=length, attn_implementation="flash_attention_2",
                        attention_masked=False, loss_impl="hf_bf16_ce", autocast=not qlora)
    return Row(f"Q-{model.removeprefix('qwen-')}-{method}-{length}", model, settings, gib * GiB, "total",
               "holdout", "QwenLM/Qwen README.md @ 03cd81f, Profiling of Memory and Speed", added=True)


# unslothai/unsloth README @ 000252c "Llama 3.1 (8B) max. context length", Hugging Face + FA2 column: the
# longest padded sequence that fit a card of each size (GB read as GiB).
UNSLOTH_CONTEXT = ((12, 932), (16, 2551), (24, 5789), (40, 12264), (48, 15502), (80, 28454))


def _unsloth(card_gib: int, tokens: int) -> Row:
    # Llama-3.1-8B-Instruct, bitsandbytes 4-bit QLoRA r=32 on all linear layers, batch 1, FA2. The HF
    # baseline of late 2024: TRL SFTTrainer (prepare_model_for_kbit_training on a 4-bit model, so fp32
    # embeddings and lm_head), checkpointing on, transformers 4.46's loss (fp32 upcast plus a shifted copy).
    settings = Settings("nf4", True, 2, 32, ALL_LINEAR, lora_dropout=0.0, lora_bytes=4, micro_batch_size=1,
                        seq_len=tokens, attn_implementation="flash_attention_2", attention_masked=False,
                        loss_impl="hf_legacy", autocast=True, upcast_unquantized=True)
    return Row(f"U-{card_gib}GB-{tokens}", "llama-3-8b", settings, card_gib * GiB, "capacity", "holdout",
               "unslothai/unsloth README.md @ 000252c, Llama 3.1 (8B) max. context length (HF + FA2)", added=True)


def _qwen_rows() -> tuple[Row, ...]:
    return tuple(_qwen(model, method, length, gib) for (model, method), values in QWEN_TABLE.items()
                 for length, gib in zip(QWEN_LENGTHS, values, strict=True))


ROWS: tuple[Row, ...] = (
    _b1("allocated", 18.969474048e9),
    _b1("reserved", 21.38046464e9),
    _answerai("A5-qlora-bs8", "nf4", 8, 20.94),
    _answerai("A6-lora-bs4", "none", 4, 22.04),
    _litgpt("L5-none", "llama-2-7b", "none", False, 21.30),
    _litgpt("L5-nf4", "llama-2-7b", "nf4", False, 14.14),
    _litgpt("L5-nf4dq", "llama-2-7b", "nf4", True, 13.84),
    _litgpt("L6-none-bs2", "llama-2-7b", "none", False, 29.07, batch=2),
    _litgpt("L7-none", "llama-2-13b", "none", False, 38.12),
    _litgpt("L7-nf4", "llama-2-13b", "nf4", False, 23.14),
    _litgpt("L7-nf4dq", "llama-2-13b", "nf4", True, 22.55),
    *_qwen_rows(),
    *(_unsloth(card, tokens) for card, tokens in UNSLOTH_CONTEXT),
)
