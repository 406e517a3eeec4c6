"""Benchmark: CLI start-up time and LoRA training throughput on this machine, per dtype and quantization.

The CPU defaults (compute_dtype auto -> fp32 on a CPU without native bf16; nf4 kept on) are
chosen from these figures. Every variant runs in this one process on the same batches, so
the ratios against the fp32 / no-quantization baseline hold even when the machine's speed
drifts. Results are printed and written to docs/benchmarks.json; docs/benchmarks.md quotes them.

    .venv/bin/python scripts/bench_train.py [--model models/smollm2-135m-instruct] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli_startup(runs: int = 7) -> dict[str, float]:
    """Wall time of ``nova --help`` (a fresh interpreter each time), median of ``runs`` after one warm-up."""
    times = []
    for i in range(runs + 1):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "nova", "--help"], check=True, capture_output=True)
        if i:
            times.append(time.perf_counter() - start)
    return {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
            "max_s": round(max(times), 3), "runs": runs}


def train_throughput(model_dir: str, dtype_name: str, quant: str, steps: int, batch: int,
                     seq: int) -> dict[str, float]:
    """Tokens per second of LoRA (r=8, all-linear) forward + backward + AdamW step."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    kwargs: dict = {"dtype": dtype}
    if quant == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    batch_ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=generator)
    rates = []
    for i in range(steps + 1):  # the first step warms up allocators and kernels
        start = time.perf_counter()
        loss = model(input_ids=batch_ids, labels=batch_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if i:
            rates.append(batch_ids.numel() / (time.perf_counter() - start))
    del model, optimizer
    return {"tokens_per_s": round(statistics.median(rates), 1), "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "smollm2-135m-instruct"))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--slow-steps", type=int, default=1, help="steps for fp16 (about 25x slower on a CPU)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.json"))
    parser.add_argument("--variants", default="fp32/none,fp32/nf4,bf16/none,bf16/nf4,fp16/none,fp16/nf4",
                        help="comma-separated dtype/quantization pairs")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    results: dict = {"machine": {"threads": torch.get_num_threads(), "torch": torch.__version__},
                     "cli_help": cli_startup()}
    print(f"nova --help: median {results['cli_help']['median_s']} s")
    variants = [tuple(v.split("/")) for v in args.variants.split(",")]
    throughput = {}
    for dtype_name, quant in variants:
        steps = args.slow_steps if dtype_name == "fp16" else args.steps  # fp16 has no fast CPU kernels
        r = train_throughput(args.model, dtype_name, quant, steps, args.batch, args.seq)
        throughput[f"{dtype_name}/{quant}"] = r
        print(f"{dtype_name:>5} {quant:>4}: {r['tokens_per_s']:8.1f} tokens/s ({steps} steps)", flush=True)
    base = throughput.get("fp32/none", next(iter(throughput.values())))["tokens_per_s"]
    for r in throughput.values():
        r["ratio_vs_fp32_none"] = round(r["tokens_per_s"] / base, 3)
    results["train_throughput"] = throughput
    results["shape"] = {"micro_batch": args.batch, "seq_len": args.seq, "lora": "r=8 all-linear"}
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
