"""The GPU kit's multi-GPU case: each strategy on every GPU of the machine vs one GPU with the same
effective batch (nova train --nproc-per-node N), run by scripts/gpu_check.py when a machine with
several GPUs is lent (``--multi-gpu`` forces it; on CPU it runs gloo ranks)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any


def multi_gpu(config: Path, work: Path, ranks: int, cli: Any, timeout: float = 900) -> dict[str, Any]:
    """DDP, FSDP2 (over the kit's base and over its nf4 quantization) and (when installed) DeepSpeed ZeRO-2/3
    over ``ranks`` ranks, and one rank with ``ranks`` times the accumulation on the same base: exit codes,
    seconds, and how far each adapter is from the one-rank one."""
    base = json.loads(config.read_text(encoding="utf-8"))
    accumulation = base["training"]["gradient_accumulation_steps"]
    base["training"].update({"max_steps": 8, "save_steps": 4, "lr_scheduler": "cosine", "warmup_steps": 1})
    runs = {"one": ([], accumulation * ranks), "ddp": (["ddp"], accumulation), "fsdp": (["fsdp"], accumulation),
            # FSDP-QLoRA: the nf4 base sharded (stored in the compute dtype), against one GPU on the same nf4 base
            "one_nf4": ([], accumulation * ranks), "fsdp_nf4": (["fsdp"], accumulation)}
    if importlib.util.find_spec("deepspeed") is not None:
        runs.update({"zero2": (["deepspeed", "2"], accumulation), "zero3": (["deepspeed", "3"], accumulation)})
    out: dict[str, Any] = {"ranks": ranks}
    for name, (strategy, acc) in runs.items():
        path = work / f"{name}.yaml"
        model = {**base["model"], "quantization": "nf4"} if name.endswith("_nf4") else base["model"]
        cfg = {**base, "model": model, "output_dir": str(work / name),
               "training": {**base["training"], "gradient_accumulation_steps": acc}}
        if strategy:
            cfg["distributed"] = {"strategy": strategy[0], **({"zero_stage": int(strategy[1])} if strategy[1:] else {})}
        path.write_text(json.dumps(cfg), encoding="utf-8")
        launch = ["--nproc-per-node", str(ranks)] if strategy else []
        out[name] = cli(["-m", "nova", "train", "--config", str(path), *launch], work, timeout)
        one = "one_nf4" if name.endswith("_nf4") else "one"
        if strategy and out[name]["rc"] == 0 and out[one]["rc"] == 0:
            out[name]["max_abs_diff_vs_one"] = _max_diff(work / one, work / name)
    return out


def _max_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    ta, tb = (load_file(str(p / "adapter" / "adapter_model.safetensors")) for p in (a, b))
    if ta.keys() != tb.keys() or any(ta[k].shape != tb[k].shape for k in ta):
        return float("inf")  # not whole: a shard saved for the adapter
    return max(float((ta[k].float() - tb[k].float()).abs().max()) for k in ta)
