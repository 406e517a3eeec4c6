"""The scaling table of docs/distributed.md: memory per GPU from nova's estimate, and the
communication each strategy adds per optimizer step against PCIe, NVLink and InfiniBand.

    PYTHONPATH=src .venv/bin/python scripts/scaling_table.py > docs/scaling-table.md

On paper, for the clusters nova cannot run here; every assumption is a constant below.
"""

from __future__ import annotations

from dataclasses import replace

from nova.preflight.estimate import base_weight_bytes, estimate_memory, lora_params
from nova.preflight.settings import Settings
from nova.preflight.shape import model_shape

GiB = 1024**3
# Llama-3.1-8B's config.json (the shape nova's estimate reads)
LLAMA_8B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
            "tie_word_embeddings": False, "max_position_embeddings": 131072}
# nova's defaults for a QLoRA SFT step: nf4 base, r 16 on every linear, micro batch 4 x 1024 tokens
STEP = Settings(quantization="nf4", lora_r=16, micro_batch_size=4, seq_len=1024, gradient_checkpointing=True)
# bus bandwidth a ring collective reaches per GPU, GB/s (nccl-tests busbw, typical, not peak)
LINKS = {"PCIe 4.0 x16": 20.0, "NVLink (A100, NVLink3)": 230.0, "InfiniBand HDR 200 Gb/s": 23.0}
# compute of one step: 8 x params x tokens FLOPs (forward, backward through the activations, and the
# forward again under gradient checkpointing; LoRA computes no weight gradients of the base) at
# 40 % of an A100's 312 bf16 TFLOP/s
STEP_FLOPS_PER_PARAM_TOKEN = 8
GPU_FLOPS = 0.40 * 312e12
LAYOUTS = [("2 GPUs", 2, 1), ("4 GPUs", 4, 1), ("8 GPUs", 8, 1), ("2 nodes x 4 GPUs", 8, 2)]


def memory_gib(strategy: str, world: int) -> float:
    s = {"ddp": replace(STEP, ddp=True), "fsdp": replace(STEP, shard_world=world),
         "zero2": replace(STEP, zero2_bucket=int(5e8)), "zero3": replace(STEP, shard_world=world)}[strategy]
    return estimate_memory(LLAMA_8B, s).total_bytes / GiB


def comm_bytes(strategy: str, world: int) -> float:
    """Bytes each GPU sends per optimizer step (ring collectives: (N-1)/N of the tensor per pass)."""
    shape = model_shape(LLAMA_8B)
    adapter = lora_params(shape, STEP) * 4  # fp32 gradients
    base = base_weight_bytes(shape, STEP)  # 4-bit weights as stored (in the compute dtype's bytes)
    ring = (world - 1) / world
    return {"ddp": 2 * ring * adapter,  # all-reduce of the adapter's gradients
            "fsdp": ring * (2 * base + adapter + adapter),  # gather the base forward and backward;
            # reduce-scatter the adapter's gradients, gather the updated adapter
            "zero2": ring * (adapter + adapter),  # reduce-scatter gradients, all-gather the updated adapter
            "zero3": ring * (2 * base + adapter + adapter)}[strategy]


def step_seconds() -> float:
    tokens = STEP.micro_batch_size * STEP.seq_len
    return STEP_FLOPS_PER_PARAM_TOKEN * model_shape(LLAMA_8B).total_params * tokens / GPU_FLOPS


def efficiency(strategy: str, world: int, nodes: int, link: str) -> float:
    """Compute over compute plus communication (no overlap: the floor; overlap only raises it)."""
    bandwidth = LINKS["InfiniBand HDR 200 Gb/s"] if nodes > 1 else LINKS[link]
    seconds = step_seconds()
    return seconds / (seconds + comm_bytes(strategy, world) / (bandwidth * 1e9))


def main() -> None:
    print(f"Llama-3.1-8B, nf4, LoRA r {STEP.lora_r} on every linear, micro batch {STEP.micro_batch_size} x "
          f"{STEP.seq_len} tokens, gradient checkpointing; one step {step_seconds():.2f} s of compute per GPU.\n")
    names = {"ddp": "DDP", "fsdp": "FSDP2", "zero2": "ZeRO-2", "zero3": "ZeRO-3"}
    print("| strategy | layout | memory per GPU (GiB) | sent per GPU per step (MiB) | efficiency PCIe | "
          "efficiency NVLink | efficiency 2 nodes (IB) |")
    print("|---|---|---|---|---|---|---|")
    for key, name in names.items():
        for label, world, nodes in LAYOUTS:
            local = f"{efficiency(key, world, 1, 'PCIe 4.0 x16'):.0%}" if nodes == 1 else "-"
            nvlink = f"{efficiency(key, world, 1, 'NVLink (A100, NVLink3)'):.0%}" if nodes == 1 else "-"
            ib = f"{efficiency(key, world, nodes, ''):.0%}" if nodes > 1 else "-"
            print(f"| {name} | {label} | {memory_gib(key, world):.1f} | {comm_bytes(key, world) / 2**20:,.0f} | "
                  f"{local} | {nvlink} | {ib} |")


if __name__ == "__main__":
    main()
