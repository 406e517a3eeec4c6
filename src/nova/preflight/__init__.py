"""Preflight: answer "will this run work on this machine?" in a second, before any model loads.

Checks the environment, every GPU (through NVML, including other programs holding memory),
the peak memory of each stage (estimated from config.json alone), the model, chat template,
data, learning rate, schedule and disk, and gives one verdict with a fix for each problem.

    report = run_preflight(loaded)          # loaded: nova.config.load.LoadedConfig
    report.verdict                          # "pass" | "warn" | "fail"
    report.auto_fit                         # the auto-fit choice when training.auto_fit is on

``fit_batch`` chooses micro batch, accumulation and checkpointing for a memory budget.
Nothing here imports torch.
"""

from nova.preflight.checks_memory import fit_stage
from nova.preflight.estimate import (
    Estimate,
    ModelShape,
    Settings,
    estimate_for_shape,
    estimate_memory,
    model_shape,
)
from nova.preflight.fit import FitChoice, fit_batch
from nova.preflight.gpus import GpuInfo, GpuProcess, GpuSnapshot, HypotheticalProbe, NvmlProbe
from nova.preflight.report import Check, PreflightReport
from nova.preflight.run import run_preflight

__all__ = [
    "Check", "Estimate", "FitChoice", "GpuInfo", "GpuProcess", "GpuSnapshot", "HypotheticalProbe", "ModelShape",
    "NvmlProbe", "PreflightReport", "Settings", "estimate_for_shape", "estimate_memory", "fit_batch", "fit_stage",
    "model_shape", "run_preflight",
]
