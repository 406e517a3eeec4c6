"""The baseline nova is measured against: a plain TRL SFTTrainer + PEFT LoRA script.

Written the way a knowledgeable user would write it in an afternoon (TRL 1.x docs): the base in
4-bit nf4 through bitsandbytes (or unquantized), LoRA on every linear layer, conversational
prompt/completion data so TRL applies the chat template and trains on the completion only,
the same micro batch, dtype and schedule as the nova run it is compared with, no gradient
checkpointing on a CPU, no eval, no checkpoints. Prints one JSON line with the figures.

    python scripts/baseline_trl_sft.py --model models/smollm2-135m-instruct --data data.jsonl
"""

from __future__ import annotations

import argparse
import json
import resource
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="JSONL of {prompt: [messages], completion: [messages]}")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--quantization", default="nf4", choices=["nf4", "none"])
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--accumulation", type=int, default=1)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--adapter-dtype", default="trl", choices=["trl", "fp32"],
                   help="trl: as SFTTrainer leaves it (bf16 on a 4-bit base, whatever the dtype); fp32: cast "
                        "back after the trainer is built, what a user who knows about that cast would add")
    args = p.parse_args()

    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    kwargs: dict = {"dtype": dtype}
    if args.quantization == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = {"": 0} if torch.cuda.is_available() else {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(args.model, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    dataset = load_dataset("json", data_files=args.data, split="train")
    config = SFTConfig(
        output_dir="/tmp/nova-baseline-trl", per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=args.accumulation, num_train_epochs=1, learning_rate=args.lr,
        lr_scheduler_type="cosine", warmup_steps=0.05, max_length=args.max_length, logging_steps=1,
        save_strategy="no", eval_strategy="no", report_to="none", seed=args.seed, bf16=args.dtype == "bf16",
        use_cpu=not torch.cuda.is_available(), gradient_checkpointing=False, disable_tqdm=True,
        dataloader_num_workers=0)
    peft_config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear",
                             task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config)
    if args.adapter_dtype == "fp32":
        for param in trainer.model.parameters():
            if param.requires_grad:
                param.data = param.data.to(torch.float32)
    trained = sum(sum(1 for t in row if t != -100) for row in trainer.train_dataset["labels"])
    real = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - start
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    peak = (torch.cuda.max_memory_reserved() if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    runner = "trl" if args.adapter_dtype == "trl" else "trl_fp32_adapters"
    print(json.dumps({"runner": runner, "seconds": seconds, "steps": trainer.state.global_step,
                      "trained_tokens": trained, "real_tokens": real, "train_loss": output.training_loss,
                      "mean_logged_loss": sum(losses) / max(len(losses), 1), "peak_bytes": peak,
                      "peak_kind": "cuda_max_memory_reserved" if torch.cuda.is_available() else "rss"}))


if __name__ == "__main__":
    main()
