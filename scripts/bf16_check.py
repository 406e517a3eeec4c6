"""Why DPO did not learn in bf16, measured: the two causes, before and after nova's fix (issue 24).

1. Updates rounded away. One AdamW step at a preference learning rate on the trainable adapter,
   kept in bf16 (TRL's cast of a 4-bit model's adapter, what nova trained with before) and kept
   fp32 under bf16 autocast (mixed precision's master weights, nova now): the share of adapter
   elements whose value changed.
2. Step-0 noise of the implicit reward. A chained DPO stage (a trained adapter below, the reference
   a frozen copy of it) scores the policy on the training batches before any update; the reference
   is scored (a) as TRL precomputes it, over the dataset in file order, in other batches, and
   (b) live, on the very batch the policy is scored on (nova now). Before any update the policy is
   its reference, so every implicit reward should be 0; what is left is numerical noise.

    python scripts/bf16_check.py [--model models/smollm2-135m-instruct] [--dtype bf16] [--out FILE.json]

Runs on a CPU (bf16 is emulated, so slowly, on CPUs without AVX512-BF16/AMX) or a GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def load(model_dir: str, dtype_name: str) -> tuple[Any, Any, Any]:
    import torch

    from nova.config.schema import ModelConfig
    from nova.model.loading import Placement, load_base_model, load_tokenizer

    cuda = torch.cuda.is_available()
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    placement = Placement("cuda" if cuda else "cpu", dtype, 0)
    cfg = ModelConfig(base=model_dir, quantization="nf4")
    return load_base_model(cfg, placement), load_tokenizer(cfg), placement


def chained_adapter(base: Any, r: int, seed: int) -> Any:
    """base + a trained-looking adapter (random B) as the phase adapter, and a frozen copy of it as the
    reference (what a DPO stage after an SFT stage has: nova.model.trained.Lora.start_stage)."""
    import torch

    from nova.config.schema import LoraConfig
    from nova.model.adapters import TRAINABLE, activate, add_trainable

    model = add_trainable(base, LoraConfig(r=r, alpha=2 * r, dropout=0.0), ())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, selected_adapters=[TRAINABLE])
        model.load_adapter(tmp, adapter_name="stage_start", is_trainable=False)
    activate(model, [TRAINABLE], trainable=[TRAINABLE])
    return model


def dpo_trainer(model: Any, tokenizer: Any, placement: Any, pairs: Path, micro_batch: int, limit: int,
                work: Path) -> Any:
    from nova.config.data_schema import DataConfig, DatasetSpec
    from nova.config.schema import StageConfig, TrainingConfig
    from nova.data import prepare_stage_data
    from nova.methods.dpo import DPOConfig
    from nova.model.adapters import keep_trainable_fp32
    from nova.model.trained import STAGE_REF, StageReference
    from nova.train.machinery.resilience import StopRequest
    from nova.train.methods.common import TrainerHooks, TrainerInputs
    from nova.train.methods.dpo import build_dpo_trainer

    data_cfg = DataConfig(datasets=[DatasetSpec(path=str(pairs), max_samples=limit)], eval_split=0.0,
                          cache_dir=str(work / "cache"))
    dpo = DPOConfig(beta=0.1, max_prompt_length=128, max_completion_length=192)
    stage = StageConfig(method="dpo", data=data_cfg, dpo=dpo, training=TrainingConfig(
        micro_batch_size=micro_batch, gradient_accumulation_steps=1, max_steps=1, learning_rate=5e-6,
        warmup_steps=0, save_steps=10**6, eval_steps=10**6, logging_steps=1, gradient_checkpointing=False))
    data = prepare_stage_data(data_cfg, tokenizer, method="dpo", seed=0, dpo=dpo)
    hooks = TrainerHooks(work / "out", placement, work / "metrics.jsonl", "dpo", "check/dpo", StopRequest())
    with keep_trainable_fp32(model):
        return build_dpo_trainer(TrainerInputs(model, tokenizer, stage, SimpleNamespace(train=data.train, eval=None),
                                               hooks, StageReference((STAGE_REF,), live=True)))


def step0_rewards(trainer: Any, precomputed: bool) -> list[float]:
    """Per-pair implicit reward margins of the policy before any update, on the training batches."""
    import torch

    model = trainer.model
    model.train()
    if precomputed:
        trainer.live_reference = False
        trainer.train_dataset = trainer._precompute_ref_logps(trainer.train_dataset, "train",
                                                              trainer.args.per_device_train_batch_size)
    margins: list[float] = []
    for batch in trainer.get_train_dataloader():
        batch = trainer._prepare_inputs(batch)
        with torch.no_grad(), trainer.accelerator.autocast():  # as train() runs the forward
            trainer._compute_loss(model, batch, False)
        margins.append(trainer._metrics["train"]["rewards/margins"][-1])
    trainer._metrics["train"].clear()
    trainer.live_reference = True
    return margins


def changed_share(model: Any, master_fp32: bool, lr: float) -> dict[str, float]:
    """One AdamW step on a gradient of the adapter: the share of its elements whose value changed."""
    import torch

    params = [p for n, p in model.named_parameters() if p.requires_grad]
    saved = [p.data.clone() for p in params]  # the step below changes fp32 weights in place
    if not master_fp32:
        for p in params:
            p.data = p.data.to(torch.bfloat16)  # TRL's cast: weights and Adam states in bf16
    before = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = (torch.randn(p.shape, generator=gen) * 1e-3).to(p.dtype)
    torch.optim.AdamW(params, lr=lr, weight_decay=0.0).step()
    changed = sum(int((p.detach() != b).sum()) for p, b in zip(params, before, strict=True))
    total = sum(p.numel() for p in params)
    for p, data in zip(params, saved, strict=True):
        p.data, p.grad = data, None
    return {"changed_share": changed / total, "elements": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "models" / "smollm2-135m-instruct"))
    parser.add_argument("--pairs", default=str(ROOT / "data" / "sora_dpo_short.jsonl"))
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-6)
    parser.add_argument("--pairs-limit", type=int, default=8, help="preference pairs scored (file order)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    started = time.time()
    base, tokenizer, placement = load(args.model, args.dtype)
    model = chained_adapter(base, r=16, seed=0)
    result: dict[str, Any] = {"model": args.model, "dtype": args.dtype, "device": placement.device,
                              "cpu": platform.processor() or platform.machine(), "lr": args.lr}
    result["update_bf16_weights"] = changed_share(model, master_fp32=False, lr=args.lr)
    result["update_fp32_master"] = changed_share(model, master_fp32=True, lr=args.lr)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = dpo_trainer(model, tokenizer, placement, Path(args.pairs), args.micro_batch, args.pairs_limit,
                              Path(tmp))
        live = step0_rewards(trainer, precomputed=False)
        pre = step0_rewards(trainer, precomputed=True)
    result["step0_margin_live"] = {"max_abs": max(abs(m) for m in live), "batches": len(live)}
    result["step0_margin_precomputed"] = {"max_abs": max(abs(m) for m in pre), "batches": len(pre)}
    result["seconds"] = round(time.time() - started, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
