"""Benchmark: nova train against a plain TRL + PEFT script (scripts/baseline_trl_sft.py), side by side.

Same model, data, LoRA (r=8, alpha 16, dropout 0.05, all linear layers), micro batch, max_length,
dtype, quantization, learning rate and schedule, one epoch, no eval, no checkpoints. Each run is
its own process, one after the other, in this one invocation; the figures are the trainer's
own train() time, trained tokens per second, peak memory (RSS on CPU, max_memory_reserved on a
GPU) and the mean train loss. With a 4-bit base and fp32 compute the baseline runs twice: as
TRL leaves it (its trainer casts the adapter to bf16) and with the adapter cast back to fp32.
Two data shapes: short instruction records of varied length
(the shortest prompt + chosen answers of data/sora_dpo.jsonl) and long multi-turn chats near max_length.

    .venv/bin/python scripts/bench_sft.py [--records 100] [--shapes short,long] [--out docs/bench-sft.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "data" / "sora_dpo.jsonl"  # Apache-2.0, see data/README.md


def _pairs(tokenizer: Any) -> list[tuple[int, list[dict[str, str]], dict[str, str]]]:
    """(tokens, prompt messages, chosen answer) of every preference record, shortest first."""
    out = []
    for line in SOURCE.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        answer = r["chosen"][-1]
        text = tokenizer.apply_chat_template([*r["prompt"], answer], tokenize=False)
        out.append((len(tokenizer(text, add_special_tokens=False).input_ids), r["prompt"], answer))
    return sorted(out, key=lambda p: p[0])


def short_records(n: int, tokenizer: Any) -> list[dict[str, Any]]:
    """The n shortest prompt + chosen answer pairs: instruction data of varied length (75 to ~450 tokens)."""
    return [{"prompt": prompt, "completion": [answer]} for _, prompt, answer in _pairs(tokenizer)[:n]]


def long_records(n: int, tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
    """Multi-turn chats of pairs drawn at random (seeded; a pair may recur in other chats), each grown until
    the next pair would pass 90% of max_length."""
    import random

    pool = [p for p in _pairs(tokenizer) if p[0] < max_length // 2]
    rng = random.Random(0)
    out: list[dict[str, Any]] = []
    while len(out) < n:
        turns: list[dict[str, str]] = []
        for _ in range(64):
            _, prompt, answer = rng.choice(pool)
            trial = [*turns, *[m for m in prompt if m["role"] != "system" or not turns], answer]
            text = tokenizer.apply_chat_template(trial, tokenize=False)
            if turns and len(tokenizer(text, add_special_tokens=False).input_ids) > 0.9 * max_length:
                break
            turns = trial
        out.append({"prompt": turns[:-1], "completion": [turns[-1]]})
    return out


def nova_worker(config: str) -> None:
    """Run nova train in this process; print the figures as JSON (the child side of the benchmark)."""
    import resource

    from nova.config import load_yaml_config
    from nova.console import RunLog
    from nova.train.pipeline import run_config

    loaded = load_yaml_config(config)
    run = Path(loaded.config.output_dir)
    run_config(loaded, log=RunLog(None))
    done = json.loads((run / "stages" / "sft" / "DONE").read_text())
    report = json.loads((run / "stages" / "sft" / "data_report.json").read_text())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    import torch

    peak = (torch.cuda.max_memory_reserved() if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(json.dumps({"runner": "nova", "seconds": done["seconds"], "steps": done["steps"],
                      "trained_tokens": report["tokens"]["trained_tokens"],
                      "real_tokens": report["tokens"]["trained_tokens"] + report["tokens"]["masked_tokens"],
                      "train_loss": done["train_loss"], "mean_logged_loss": sum(losses) / max(len(losses), 1),
                      "peak_bytes": peak, "peak_kind": "cuda_max_memory_reserved" if torch.cuda.is_available()
                      else "rss"}))


def _last_json(out: str) -> dict[str, Any]:
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON result in the output:\n{out[-2000:]}")


def run_pair(shape: str, data: Path, work: Path, args: argparse.Namespace, dtype: str) -> dict[str, Any]:
    config = work / f"nova-{shape}.yaml"
    config.write_text(json.dumps({
        "name": f"bench-{shape}", "model": {"base": args.model, "quantization": args.quantization,
                                           "compute_dtype": dtype},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.05},
        "data": {"datasets": [{"path": str(data)}], "eval_split": 0.0, "max_length": args.max_length,
                 "dedup": False, "cache_dir": str(work / "cache")},
        "training": {"num_epochs": 1, "micro_batch_size": args.micro_batch, "gradient_accumulation_steps": 1,
                     "learning_rate": 2e-4, "lr_scheduler": "cosine", "warmup_ratio": 0.05, "logging_steps": 1,
                     "save_steps": 100000, "gradient_checkpointing": False, "seed": 42},
        "output_dir": str(work / f"run-{shape}"), "logs_dir": str(work / "logs")}))
    env = {**os.environ, "TQDM_DISABLE": "1"}
    results = {}
    baseline = [sys.executable, str(ROOT / "scripts" / "baseline_trl_sft.py"), "--model", args.model, "--data",
                str(data), "--dtype", dtype, "--quantization", args.quantization, "--micro-batch",
                str(args.micro_batch), "--max-length", str(args.max_length)]
    nova = [sys.executable, str(Path(__file__).resolve()), "--worker-nova", str(config)]
    runners = [("trl", baseline)]
    if args.quantization != "none" and dtype != "bf16":  # TRL's bf16 cast of the adapter changes something
        runners.append(("trl_fp32_adapters", [*baseline, "--adapter-dtype", "fp32"]))
    for name, cmd in (*runners, ("nova", nova)):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        if done.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
        results[name] = _last_json(done.stdout)
        r = results[name]
        print(f"  {shape:5} {name:17}: {r['seconds']:7.1f} s, {r['trained_tokens'] / r['seconds']:7.1f} trained "
              f"tok/s, peak {r['peak_bytes'] / 2**30:.2f} GiB, train loss {r['train_loss']:.4f}", flush=True)
    t, n = results["trl"], results["nova"]
    results["speedup"] = round(t["seconds"] / n["seconds"], 3)
    results["loss_rel_diff"] = round(n["train_loss"] / t["train_loss"] - 1, 4)
    results["peak_ratio"] = round(n["peak_bytes"] / t["peak_bytes"], 3)
    print(f"  {shape:5} nova / trl: {results['speedup']}x faster, loss {results['loss_rel_diff']:+.2%}, "
          f"peak memory x{results['peak_ratio']}", flush=True)
    if "trl_fp32_adapters" in results:
        f = results["trl_fp32_adapters"]
        results["speedup_vs_fp32_adapters"] = round(f["seconds"] / n["seconds"], 3)
        results["loss_rel_diff_vs_fp32_adapters"] = round(n["train_loss"] / f["train_loss"] - 1, 4)
        results["peak_ratio_vs_fp32_adapters"] = round(n["peak_bytes"] / f["peak_bytes"], 3)
        print(f"  {shape:5} nova / trl with fp32 adapters: {results['speedup_vs_fp32_adapters']}x faster, "
              f"loss {results['loss_rel_diff_vs_fp32_adapters']:+.2%}, "
              f"peak memory x{results['peak_ratio_vs_fp32_adapters']}", flush=True)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "models" / "smollm2-135m-instruct"))
    p.add_argument("--records", type=int, default=100)
    p.add_argument("--shapes", default="short,long")
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--quantization", default="nf4", choices=["nf4", "none"])
    p.add_argument("--dtype", default="auto", help="auto: what nova picks on this machine")
    p.add_argument("--out", default=str(ROOT / "docs" / "bench-sft.json"))
    p.add_argument("--worker-nova", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker_nova:
        nova_worker(args.worker_nova)
        return
    from transformers import AutoTokenizer

    from nova.model.loading import choose_placement

    dtype = args.dtype if args.dtype != "auto" else {"float32": "fp32", "bfloat16": "bf16"}[
        choose_placement("auto").dtype_name]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    out: dict[str, Any] = {"model": Path(args.model).name, "dtype": dtype, "quantization": args.quantization,
                           "micro_batch": args.micro_batch, "max_length": args.max_length, "shapes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for shape in args.shapes.split(","):
            records = short_records(args.records, tokenizer) if shape == "short" else long_records(
                args.records, tokenizer, args.max_length)
            data = work / f"{shape}.jsonl"
            data.write_text("".join(json.dumps(r) + "\n" for r in records))
            print(f"{shape}: {len(records)} records", flush=True)
            out["shapes"][shape] = {"records": len(records), **run_pair(shape, data, work, args, dtype)}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
