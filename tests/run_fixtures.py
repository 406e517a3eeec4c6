"""A run directory as ``nova train`` leaves it, written by hand (no training): for the readers of runs."""

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
    return run
