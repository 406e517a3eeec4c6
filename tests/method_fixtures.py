"""Small synthetic data for the training-method tests: one clear pattern a random model picks up fast.

A good reply names the number it was asked for, a bad one refuses; the same questions appear as
SFT chats, preference pairs (chosen good, rejected bad) and unpaired feedback (labelled replies).
"""

from __future__ import annotations

import json
from pathlib import Path


def good(k: int) -> str:
    return f"It is {k}."


def bad(k: int) -> str:
    return "No, never."


def write_method_data(tmp: Path, n: int = 32) -> dict[str, Path]:
    """``{"sft": ..., "pairs": ..., "feedback": ...}``: JSONL files of ``n`` records each under ``tmp``."""
    ask = [[{"role": "user", "content": f"Name {k}."}] for k in range(n)]
    rows = {
        "sft": [{"messages": [*q, {"role": "assistant", "content": good(k)}]} for k, q in enumerate(ask)],
        "pairs": [{"prompt": q, "chosen": good(k), "rejected": bad(k)} for k, q in enumerate(ask)],
        "feedback": [{"prompt": q, "completion": good(k) if k % 2 else bad(k), "label": bool(k % 2)}
                     for k, q in enumerate(ask)],
    }
    out = {}
    for name, records in rows.items():
        out[name] = tmp / f"{name}.jsonl"
        out[name].write_text("".join(json.dumps(r) + "\n" for r in records))
    return out
