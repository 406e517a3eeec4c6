"""Run directories as ``nova train`` leaves them, written by hand (no training): for the readers of runs."""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def fake_run(root: Path, base: Path | str, *, trust_remote_code: bool = True, name: str = "phase") -> Path:
    """``root/runs/<name>`` with a config.yaml whose model is ``base`` and an adapter trained on it."""
    run = root / "runs" / name
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": Path(base).name, "peft_type": "LORA", "r": 8, "lora_alpha": 16}))
    config = {"name": name, "model": {"base": str(base), "quantization": "none",
                                      "trust_remote_code": trust_remote_code},
              "data": {"datasets": []}, "_chain": [], "_resolved": {}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "COMPLETE").write_text("{}")  # finished: merge, export and infer refuse a run without it
    return run


ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def save_random_adapter(base: Path, out: Path, *, seed: int, **lora: object) -> None:
    """A PEFT LoRA adapter of ``base`` with random A and B (so every module changes the output)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    config = LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False, **lora)  # type: ignore[arg-type]
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.mul_(0.5)
    peft_model.save_pretrained(str(out))


def chained_runs(root: Path, base: Path) -> dict[str, Path]:
    """Two run directories as nova train leaves them: 'first' (q/v, alpha_pattern) and 'second' (all
    linear, rsLoRA) trained on top of it; adapters random, with data reports and metrics."""
    import yaml

    out = {}
    specs = {"first": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], alpha_pattern={"q_proj": 32}),
             "second": dict(r=4, lora_alpha=8, target_modules=ALL_LINEAR, use_rslora=True)}
    for seed, (name, lora) in enumerate(specs.items()):
        run = root / "pipe" / name
        save_random_adapter(base, run / "adapter", seed=seed, **lora)
        chain = [{"phase": "first", "adapter": str(out["first"] / "adapter")}] if name == "second" else []
        config = {"name": name, "model": {"base": str(base), "quantization": "none"},
                  "lora": {"r": lora["r"], "alpha": lora["lora_alpha"], "target_modules": lora["target_modules"],
                           "use_rslora": bool(lora.get("use_rslora"))},
                  "data": {"datasets": [{"path": str(root / "data" / f"{name}.jsonl")}]},
                  "_chain": chain, "_resolved": {}}
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        (run / "COMPLETE").write_text("{}")
        (run / "stages" / "sft").mkdir(parents=True)
        (run / "stages" / "sft" / "data_report.json").write_text(json.dumps({
            "method": "sft", "sources": [{"path": str(root / "data" / f"{name}.jsonl"), "formats": {"messages": 12},
                                          "read": 12, "kept": 11}], "train_records": 10, "eval_records": 1}))
        (run / "metrics.jsonl").write_text(json.dumps({"stage": "sft", "step": 5, "loss": 2.5}) + "\n" + json.dumps(
            {"stage": "sft", "step": 5, "eval_loss": 2.25 + seed}) + "\n")
        out[name] = run
    return out
