"""Published peak-memory measurements and the fit of the estimator's free constants.

Only rows measured on the stack nova trains with (HF transformers + PEFT + bitsandbytes)
are fitted: BenjaminBossan/peft-experiments (PEFT + bnb, torch 2.3, RTX 4090) and the
Answer.AI fsdp_qlora DDP rows (HF llama + bnb 4-bit + LoRA, reentrant checkpointing).
lit-gpt rows (its own model code, fused qkv, chunked lm_head) are a different stack: they
are held out and only checked, with their settings mapped to what lit-gpt did. torchtune
rows (torchao NF4, a different stack that uses under half the memory of PEFT + bnb on the
same nominal run) are not used at all. See docs/memory.md for the table and the errors.

``nova.preflight.estimate.CALIBRATED`` holds the result of ``fit_constants`` on these rows
(there, so the estimate never imports this module); a test re-runs the fit and compares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from nova.files import GiB
from nova.preflight.estimate import ALL_LINEAR, CALIBRATED, Constants, Settings, estimate_for_shape, model_shape

QV = ("q_proj", "v_proj")


@dataclass(frozen=True)
class Row:
    """One published measurement and the settings it was taken with."""

    id: str
    model: str  # fixture name under tests/fixtures/model_configs/
    settings: Settings
    measured_bytes: float
    metric: Literal["allocated", "reserved"]
    role: Literal["fit", "holdout"]
    source: str


def _b1(metric: Literal["allocated", "reserved"], value: float) -> Row:
    # Llama-3-8B-Instruct, PEFT + bnb 0.43.3 nf4 double-quant, r=8 all-linear, dropout 0.05, adapters
    # and AdamW states in bf16 (autocast_adapter_dtype=False), batch 2, alpaca-cleaned cut at 512
    # tokens, no gradient checkpointing; torchtune's logger in GB (1e9) - peak over the run.
    settings = Settings("nf4", True, 2, 8, ALL_LINEAR, 0.05, 2, 2, 512, False, "adamw_torch", loss_impl="hf",
                        upcast_unquantized=False)
    return Row(f"B1-{metric}", "llama-3-8b", settings, value, metric, "fit",
               "BenjaminBossan/peft-experiments torchtune/llama3-qlora-single-device/log_peft_bnb-0.43.3.txt")


def _answerai(row_id: str, quant: Literal["nf4", "none"], batch: int, gib: float) -> Row:
    # fsdp_qlora train.py defaults: r=64 all linear, dropout 0.1, bf16 everywhere, sdpa, reentrant
    # checkpointing, ctx 2048; DDP rows hold a full copy per GPU (plus DDP's gradient buckets).
    settings = Settings(quant, False, 2, 64, ALL_LINEAR, 0.1, 2, batch, 2048, True, "adamw_torch", ddp=True,
                        loss_impl="hf", upcast_unquantized=False)
    return Row(row_id, "llama-2-7b", settings, gib * GiB, "reserved", "fit",
               "AnswerDotAI/fsdp_qlora benchmarks_03_2024.md (DDP, peak reserved GiB)")


def _litgpt(row_id: str, model: str, quant: Literal["nf4", "none"], dq: bool, gb: float) -> Row:
    # lit-gpt 8641822: r=8 on query+value, bf16-true, batch 1, longest alpaca sample 1304 tokens,
    # no checkpointing, chunked lm_head/CE, PagedAdamW (32-bit) when quantized; allocated / 1e9.
    optimizer = "paged_adamw_32bit" if quant == "nf4" else "adamw_torch"
    settings = Settings(quant, dq, 2, 8, QV, 0.05, 2, 1, 1304, False, optimizer, loss_impl="chunked",
                        upcast_unquantized=False)
    return Row(row_id, model, settings, gb * 1e9, "allocated", "holdout",
               "Lightning-AI/litgpt tutorials/resource-tables.md @ 8641822")


ROWS: tuple[Row, ...] = (
    _b1("allocated", 18.969474048e9),
    _b1("reserved", 21.38046464e9),
    _answerai("A5-qlora-bs8", "nf4", 8, 20.94),
    _answerai("A6-lora-bs4", "none", 4, 22.04),
    _litgpt("L5-none", "llama-2-7b", "none", False, 21.30),
    _litgpt("L5-nf4", "llama-2-7b", "nf4", False, 14.14),
    _litgpt("L5-nf4dq", "llama-2-7b", "nf4", True, 13.84),
    _litgpt("L7-none", "llama-2-13b", "none", False, 38.12),
    _litgpt("L7-nf4", "llama-2-13b", "nf4", False, 23.14),
    _litgpt("L7-nf4dq", "llama-2-13b", "nf4", True, 22.55),
)


def predict(row: Row, configs: dict[str, dict[str, Any]], constants: Constants = CALIBRATED) -> float:
    """The estimate in the row's own metric (allocated or reserved; never the CUDA context)."""
    est = estimate_for_shape(model_shape(configs[row.model]), row.settings, constants)
    return float(est.allocated_bytes if row.metric == "allocated" else est.reserved_bytes)


def row_errors(configs: dict[str, dict[str, Any]], constants: Constants = CALIBRATED) -> list[dict[str, Any]]:
    """Estimate vs measured for every row: relative error = estimate / measured - 1."""
    out = []
    for row in ROWS:
        est = predict(row, configs, constants)
        out.append({"id": row.id, "role": row.role, "metric": row.metric, "model": row.model,
                    "measured_gib": row.measured_bytes / GiB, "estimate_gib": est / GiB,
                    "error": est / row.measured_bytes - 1, "source": row.source})
    return out


def fit_constants(configs: dict[str, dict[str, Any]]) -> Constants:
    """Least squares in log space over the fit rows.

    The activation scale is searched on a grid; for each candidate the reserve factor has a
    closed form (the geometric mean of measured / estimated over the reserved rows).
    """
    fit_rows = [r for r in ROWS if r.role == "fit"]
    best: tuple[float, Constants] | None = None
    for step in range(0, 141):
        scale = 0.80 + step * 0.005
        trial = Constants(activation_scale=scale, reserve_factor=1.0)
        reserved = [math.log(r.measured_bytes / predict(r, configs, trial)) for r in fit_rows
                    if r.metric == "reserved"]
        factor = math.exp(sum(reserved) / len(reserved)) if reserved else 1.0
        trial = Constants(activation_scale=scale, reserve_factor=factor)
        loss = sum(math.log(predict(r, configs, trial) / r.measured_bytes) ** 2 for r in fit_rows)
        if best is None or loss < best[0]:
            best = (loss, trial)
    assert best is not None
    return best[1]
