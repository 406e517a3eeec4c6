"""``run_preflight``: every check of a phase or pipeline config, in the order a run meets them.

Environment and GPUs first (they decide the precision and the memory budget), then the
model, then each stage's memory, data, learning rate and schedule, then the disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nova.config.load import LoadedConfig
from nova.config.schema import ModelConfig, PhaseConfig, PipelineConfig, StageConfig
from nova.errors import NovaError
from nova.preflight import checks as ck
from nova.preflight.environment import Environment, environment
from nova.preflight.estimate import Estimate, ModelShape, model_shape
from nova.preflight.gpus import GpuProbe, GpuSnapshot, HypotheticalProbe, NvmlProbe, parse_size
from nova.preflight.model_source import ModelSource, resolve_model
from nova.preflight.report import Check, PreflightReport


@dataclass(frozen=True)
class _Phase:
    phase: PhaseConfig
    model: ModelConfig
    run_dir: Path


def _phases(loaded: LoadedConfig) -> list[_Phase]:
    cfg = loaded.config
    if isinstance(cfg, PipelineConfig):
        return [_Phase(p, cfg.model_for(p.name), cfg.phase_dir(p.name)) for p in cfg.phases]
    assert isinstance(cfg, PhaseConfig)
    if cfg.model is None:
        raise NovaError(f"phase '{cfg.name}' starts from '{cfg.start_from}' and names no model",
                        hint="run preflight on the pipeline file that holds both phases")
    return [_Phase(cfg, cfg.model, cfg.run_dir)]


def gpu_snapshot(gpu_memory: str | None, gpus: int | None, probe: GpuProbe | None) -> GpuSnapshot:
    """Real GPUs (NVML or an injected probe), or hypothetical ones for ``--gpu-memory``."""
    if gpus is not None and gpus < 1:
        raise NovaError(f"--gpus must be at least 1 (got {gpus})")
    if gpu_memory is not None:
        return HypotheticalProbe(parse_size(gpu_memory), gpus or 1).snapshot()
    snap = (probe or NvmlProbe()).snapshot()
    if gpus is not None and snap.gpus:
        if gpus > len(snap.gpus):
            raise NovaError(f"--gpus {gpus} but only {len(snap.gpus)} GPU(s) are present",
                            hint="add --gpu-memory SIZE to answer for GPUs you do not have")
        snap = GpuSnapshot(snap.status, snap.gpus[:gpus], snap.driver_version, snap.cuda_driver_version,
                           snap.message)
    return snap


def run_preflight(loaded: LoadedConfig, *, gpu_memory: str | None = None, gpus: int | None = None,
                  check_data: bool = True, probe: GpuProbe | None = None,
                  env: Environment | None = None) -> PreflightReport:
    """Check a config before training; never raises for a failing check (the verdict says it).

    ``gpu_memory``/``gpus`` answer for hypothetical GPUs; ``probe`` replaces NVML and ``env`` the
    package/CPU facts (tests).
    Raises NovaError only for bad arguments (an unreadable --gpu-memory).
    """
    env = env or environment()
    snap = gpu_snapshot(gpu_memory, gpus, probe)
    phases = _phases(loaded)
    report = PreflightReport(gpus=[g.to_dict() for g in snap.gpus],
                             environment={**env.to_dict(), "gpu_status": snap.status, "gpu_message": snap.message,
                                          "driver_version": snap.driver_version,
                                          "cuda_driver_version": snap.cuda_driver_version})
    report.add(ck.check_environment(env, snap, phases[0].model.quantization))
    report.add(ck.check_gpus(snap, env))
    sources: dict[str, ModelSource] = {}
    for ph in phases:
        key = ph.model.base
        if key not in sources:
            sources[key] = resolve_model(ph.model.base, revision=ph.model.revision, models_dir=ph.model.models_dir)
            report.add(ck.check_model(sources[key]))
        report.add(_named(ck.check_chat_template(ph.model, sources[key], ph.phase.stage_list), ph, phases))
    worst: tuple[int, Estimate, str, dict[str, Any] | None] | None = None
    disk: list[tuple[Path, int]] = []
    for ph in phases:
        source = sources[ph.model.base]
        shape = _shape(source, report, ph, phases)
        lora_params = 0
        for i, stage in enumerate(ph.phase.stage_list):
            label = _label(ph, i, stage, phases)
            gpu, bad = ck.select_gpu(snap, stage.training.gpu)
            if bad is not None:
                report.add(bad)
            if i == 0:
                report.add(_named(ck.check_precision(ph.model, gpu, env.cpu.bf16), ph, phases))
            if report.selected_gpu is None and gpu is not None:
                report.selected_gpu = gpu.index
            if shape is not None:
                est, auto = _memory(report, label, shape, ph, i, stage, snap, gpu, env)
                lora_params = max(lora_params, est.lora_params)
                if worst is None or est.total_bytes > worst[0]:
                    worst = (est.total_bytes, est, label, auto)
            records = _data(report, label, stage, check_data)
            report.add(ck.check_learning_rate(f"learning_rate{label}", stage))
            report.add(ck.check_schedule(f"schedule{label}", stage, records))
        if shape is not None:
            t = ph.phase.stage_list[-1].training
            per_ckpt = ck.checkpoint_bytes(lora_params, t.optimizer)
            disk.append((ph.run_dir, per_ckpt * t.save_total_limit + lora_params * 4))
    if disk:
        report.add(ck.check_disk(disk))
    else:
        report.add(Check("disk", "skip", "cannot size checkpoints without the model's config.json"))
    if worst is not None:
        report.estimate = {**worst[1].to_dict(), "stage": worst[2].strip("[]") or "train"}
        report.auto_fit = worst[3]
    return report


def _label(ph: _Phase, index: int, stage: StageConfig, phases: list[_Phase]) -> str:
    if len(phases) == 1 and len(ph.phase.stage_list) == 1:
        return ""
    return f"[{ph.phase.name}/{index + 1}:{stage.method}]"


def _named(check: Check, ph: _Phase, phases: list[_Phase]) -> Check:
    if len(phases) == 1:
        return check
    return Check(f"{check.name}[{ph.phase.name}]", check.status, check.message, check.fix)


def _shape(source: ModelSource, report: PreflightReport, ph: _Phase, phases: list[_Phase]) -> ModelShape | None:
    if source.config is None:
        report.add(_named(Check("memory", "warn", f"cannot estimate without config.json ({source.message})",
                                "make model.base a local directory with config.json, or download the hub model "
                                "into the local cache"), ph, phases))
        return None
    try:
        return model_shape(source.config)
    except NovaError as exc:
        report.add(_named(Check("memory", "warn", f"cannot estimate: {exc.message}", exc.hint or ""), ph, phases))
        return None


def _memory(report: PreflightReport, label: str, shape: ModelShape, ph: _Phase, index: int, stage: StageConfig,
            snap: GpuSnapshot, gpu: Any, env: Environment) -> tuple[Estimate, dict[str, Any] | None]:
    # a DPO stage after another stage of the same phase keeps the adapter's starting copy as reference
    ref = stage.method == "dpo" and index > 0
    settings = ck.stage_settings(ph.model, ph.phase.lora, stage, on_gpu=gpu is not None, reference_adapter=ref)
    ctx = ck.MemoryContext(snap, gpu, env.cpu.ram_available_bytes)
    check, est, auto = ck.check_memory(f"memory{label}", shape, settings, stage, ctx)
    report.add(check)
    return est, auto


def _data(report: PreflightReport, label: str, stage: StageConfig, enabled: bool) -> int | None:
    if not enabled:
        report.add(Check(f"data{label}", "skip", "data check turned off"))
        return ck.count_records(stage.data) if stage.data.datasets else None
    check, records = ck.check_data(f"data{label}", stage)
    report.add(check)
    if records is None and stage.data.datasets:
        records = ck.count_records(stage.data)
    return records


def fit_stage(model_config: dict[str, Any], model: ModelConfig, lora: Any, stage: StageConfig,
              budget_bytes: int, *, margin: float = 0.10) -> Any:
    """Auto-fit for one stage from its config objects (what ``nova train`` calls with the GPU's free bytes).

    Returns a ``FitChoice``: micro_batch_size, gradient_accumulation_steps, gradient_checkpointing,
    fits, changed and a one-line reason to record in the run directory.
    """
    from nova.preflight.fit import fit_batch

    settings = ck.stage_settings(model, lora, stage, on_gpu=True)
    return fit_batch(model_shape(model_config), settings, stage.training.gradient_accumulation_steps,
                     budget_bytes, margin=margin)
