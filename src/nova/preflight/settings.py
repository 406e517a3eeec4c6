"""How one training step runs, as far as memory is concerned, and the estimator's free constants.

``Settings`` names the code path, not just the hyperparameters: the same nominal run (QLoRA,
r=8, batch 2) differs by several GiB between a loss that upcasts full logits to fp32 and one
that projects only trained positions in tiles, between SDPA with and without an explicit mask,
and between LoRA adapters that run in fp32 (PEFT's default, no autocast) or under bf16
autocast. nova's own path is built from a stage config by ``checks_memory.stage_settings``;
calibration rows from other stacks set the fields to what those stacks did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from nova.files import MiB
from nova.methods import method_spec

Quant = Literal["nf4", "fp4", "int8", "gptq4", "none"]
Attention = Literal["sdpa", "eager", "flash_attention_2"]
# nova: nova.train.methods.loss (direct head up to 64M logits, else TRL's chunked kernel); fused: TRL's fused
# LM head (DPO); hf: transformers 5.x ForCausalLMLoss (fp32 upcast inside the loss); hf_legacy:
# transformers <= 4.46 (fp32 logits from the forward plus an fp32 shifted copy); hf_bf16_ce: remote
# code that shifts bf16 logits and runs cross-entropy under autocast (Qwen v1); chunked: lit-gpt.
LossImpl = Literal["nova", "fused", "hf", "hf_legacy", "hf_bf16_ce", "chunked"]
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Settings:
    """One stage's step: model precision, adapter, batch, attention kernel, loss path."""

    quantization: Quant = "nf4"
    double_quant: bool = True
    compute_bytes: int = 2  # bf16 / fp16 = 2, fp32 = 4
    lora_r: int = 8
    target_modules: tuple[str, ...] = ALL_LINEAR
    fused_qkv: bool = False  # one q/k/v projection (Qwen v1 c_attn, lit-gpt): one LoRA input for all three
    lora_dropout: float = 0.05  # as it runs: DPO disables dropout (TRL disable_dropout=True)
    lora_bytes: int = 4  # PEFT upcasts adapters to fp32 by default (autocast_adapter_dtype=True)
    micro_batch_size: int = 4
    seq_len: int = 1024  # tokens per sequence (padded length; padding-free: the longest allowed)
    gradient_checkpointing: bool = True
    reentrant: bool = False  # use_reentrant=True checkpointing (nova sets False)
    quant_saves_input: bool = False  # bitsandbytes <= 0.43 kept each 4-bit linear's input for backward
    optimizer: str = "adamw_torch"
    method: str = "sft"  # a training method (nova.methods): its spec says what its step holds
    attn_implementation: Attention = "sdpa"
    # An explicit mask reaches SDPA (packed rows, padding): GQA keys/values are repeated to every
    # head and each layer keeps its own additive bias; without one SDPA runs causal flash with GQA.
    attention_masked: bool = True
    attention_row: int | None = None  # tokens per attention row (packed rows); None: seq_len
    loss_impl: LossImpl = "nova"
    loss_tokens: int | None = None  # positions projected onto the vocabulary; None: every token
    logits_held: bool = False  # the training loop keeps the model output (logits) alive in backward
    autocast: bool = False  # the forward runs under torch.autocast (HF Trainer through model.forward)
    tokens_override: int | None = None  # training.max_tokens_per_batch: tokens per micro batch
    ddp: bool = False  # DDP keeps a second copy of the gradients in its buckets
    shard_world: int = 1  # FSDP / ZeRO-3: weights, adapter, gradients and optimizer states split over ranks
    zero2_bucket: int = 0  # DeepSpeed ZeRO-2 on one GPU: reduce/allgather bucket elements (0: no DeepSpeed)
    upcast_unquantized: bool = False  # peft.prepare_model_for_kbit_training: fp32 embeddings and norms
    reference_adapter: bool = False  # a later stage keeping a reference (DPO after SFT) holds a copy of the adapter
    frozen_lora_params: int = 0  # adapters of earlier phases stacked frozen under the trained one
    full: bool = False  # adapter: full: every weight trained (no LoRA; gradients and Adam states for all)
    # full fine-tuning keeps fp32 master weights (weights, gradients, Adam states) and computes under
    # autocast: fp32 embeddings and norms make the residual stream fp32 (nova.model.trained)
    master_fp32: bool = False
    device: Literal["cuda", "cpu"] = "cuda"  # the CPU has no CUDA context and no caching allocator pool

    @property
    def sequences(self) -> int:
        """Sequences in one forward pass with gradients: paired methods (DPO, ORPO, SimPO) concatenate chosen and
        rejected (KTO's second pass, the KL batch, runs without gradients and keeps no activations)."""
        return self.micro_batch_size * (2 if method_spec(self.method).paired else 1)

    @property
    def tokens(self) -> int:
        if self.tokens_override is not None:
            return self.tokens_override
        return self.sequences * self.seq_len

    @property
    def row(self) -> int:
        """Tokens that attend to each other in one row (attention cost grows with its square)."""
        return min(self.attention_row or self.seq_len, self.tokens)

    @property
    def rows(self) -> int:
        return -(-self.tokens // self.row)

    @property
    def head_tokens(self) -> int:
        """Positions that go through the LM head."""
        return self.tokens if self.loss_tokens is None else min(self.loss_tokens, self.tokens)


@dataclass(frozen=True)
class Constants:
    """The free constants, fitted in ``nova.preflight.calibration`` (see docs/memory.md).

    Both are physical: the caching allocator keeps freed blocks of the step's transient tensors
    in its pool (``max_memory_reserved`` above ``max_memory_allocated``), and the CUDA context
    (kernels, cuBLAS handles) sits outside every torch counter.
    """

    pool_fraction: float = 0.0  # reserved - allocated, as a fraction of the step's transient bytes
    cuda_context_bytes: int = 600 * MiB  # not in any torch counter; 300-2000 MiB per the sources
