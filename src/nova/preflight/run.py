"""``run_preflight``: every check of a phase or pipeline config, in the order a run meets them.

Environment and GPUs first (they decide the precision and the memory budget), then the
model, then each stage's memory, data, learning rate and schedule, then the disk. The phases
and stages come from ``nova.plan.make_plan``, so preflight names a stage as training does
(``memory[doica/sft]``); a config with a single stage keeps the plain names (``memory``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nova.config.load import LoadedConfig
from nova.config.schema import StageConfig
from nova.errors import NovaError
from nova.plan import Plan, PlannedPhase, PlannedStage, make_plan, resolve_strategy
from nova.preflight.checks_disk import check_disk, check_path_lengths, checkpoint_bytes
from nova.preflight.checks_env import (
    check_apple_device,
    check_environment,
    check_gpus,
    check_precision,
    select_gpu,
)
from nova.preflight.checks_inputs import (
    check_chat_template,
    check_data,
    check_learning_rate,
    check_model,
    check_schedule,
    check_warmup,
    count_records,
)
from nova.preflight.checks_memory import MemoryContext, check_memory, planned_settings
from nova.preflight.checks_weights import check_weights
from nova.preflight.environment import Environment, environment
from nova.preflight.estimate import (
    CALIBRATED,
    Estimate,
    ModelShape,
    estimate_for_shape,
    full_optimizer_bytes,
    model_shape,
    weight_bytes,
)
from nova.preflight.gpus import GpuProbe, GpuSnapshot, HypotheticalProbe, NvmlProbe, parse_size
from nova.preflight.model_source import ModelSource, resolve_model
from nova.preflight.report import Check, PreflightReport
from nova.system import path_limit


@dataclass(frozen=True)
class _Peak:
    """The stage with the largest estimate so far: the one the report's ``estimate`` describes."""

    estimate: Estimate
    label: str
    auto_fit: dict[str, Any] | None


MAX_GPUS = 1024  # more than any one machine holds


def gpu_snapshot(gpu_memory: str | None, gpus: int | None, probe: GpuProbe | None) -> GpuSnapshot:
    """Real GPUs (NVML or an injected probe), or hypothetical ones for ``--gpu-memory``."""
    if gpus is not None and not 1 <= gpus <= MAX_GPUS:  # a hypothetical GPU is a record: 1e8 would fill memory
        raise NovaError(f"--gpus must be between 1 and {MAX_GPUS} (got {gpus})")
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
                  env: Environment | None = None, ranks: int | None = None,
                  plan: Plan | None = None) -> PreflightReport:
    """Check a config before training; never raises for a failing check (the verdict says it).

    ``gpu_memory``/``gpus`` answer for hypothetical GPUs; ``probe`` replaces NVML and ``env`` the
    package/CPU facts (tests). ``ranks`` (``--nproc-per-node``) is the number of training processes;
    by default the config's ``distributed.gpus``. With several, each stage's memory is estimated per
    rank for the strategy that would run (a DDP replica, or FSDP shards) against the fullest GPU.
    Raises NovaError only for bad arguments (an unreadable --gpu-memory) and for a config that
    has no plan (a lone phase file with ``start_from``). ``plan``: the plan of ``loaded`` when the caller
    made it already (``nova train`` makes it once).
    """
    env = env or environment()
    snap = gpu_snapshot(gpu_memory, gpus, probe)
    plan = plan or make_plan(loaded)
    report = PreflightReport(gpus=[g.to_dict() for g in snap.gpus],
                             environment={**env.to_dict(), "gpu_status": snap.status, "gpu_message": snap.message,
                                          "driver_version": snap.driver_version,
                                          "cuda_driver_version": snap.cuda_driver_version})
    report.add(check_environment(env, snap, plan.phases[0].model.quantization))
    report.add(check_gpus(snap, env))
    world = planned_ranks(plan, snap, ranks)
    if world > 1:
        report.add(check_ranks(world, snap))
    sources = _model_checks(report, plan)
    peak: _Peak | None = None
    disk: list[tuple[Path, int]] = []
    for ph in plan.phases:
        shape = _shape(sources[ph.model.base], report, plan, ph)
        lora_params = 0
        full_disk = 0
        for stage in ph.stages:
            est, auto = _stage_checks(report, plan, ph, stage, shape, snap, env, with_data=check_data, world=world)
            if est is not None:
                lora_params = max(lora_params, est.lora_params)
                if ph.full and shape is not None:
                    keep = stage.config.training.save_total_limit
                    full_disk = max(full_disk, _full_disk(shape, est, len(ph.stages), keep))
                if peak is None or est.total_bytes > peak.estimate.total_bytes:
                    peak = _Peak(est, stage.label, auto)
        if shape is not None:
            t = ph.stages[-1].config.training
            per_ckpt = checkpoint_bytes(lora_params, t.optimizer)
            disk.append((ph.run.path, full_disk or per_ckpt * t.save_total_limit + lora_params * 4))
    if disk:
        report.add(check_disk(disk))
    else:
        report.add(Check("disk", "skip", "cannot size checkpoints without the model's config.json"))
    limit = path_limit()
    if limit is not None:  # Windows without long paths
        report.add(check_path_lengths([ph.run.path for ph in plan.phases], limit))
    if peak is not None:
        report.estimate = {**peak.estimate.to_dict(), "stage": peak.label}
        report.auto_fit = peak.auto_fit
    return report


def _full_disk(shape: ModelShape, est: Estimate, stages: int, keep: int) -> int:
    """A full fine-tuning phase on disk: ``keep`` checkpoints of the weights and the optimizer states, and
    each stage's model (the phase's model/ is hard-linked to the last one), all fp32 (the master weights)."""
    weights = shape.total_params * weight_bytes(est.settings)
    return weights * stages + keep * (weights + full_optimizer_bytes(shape, est.settings))


def _model_checks(report: PreflightReport, plan: Plan) -> dict[str, ModelSource]:
    """Each base model once (phases usually share one), then each phase's chat template."""
    sources: dict[str, ModelSource] = {}
    for ph in plan.phases:
        key = ph.model.base
        if key not in sources:
            sources[key] = resolve_model(ph.model.base, revision=ph.model.revision, models_dir=ph.model.models_dir)
            report.add(check_model(sources[key]))
            report.checks.extend(check_weights(sources[key], ph.model))
        stages = [s.config for s in ph.stages]
        report.add(_named(check_chat_template(ph.model, sources[key], stages), plan, ph))
    return sources


def _stage_checks(report: PreflightReport, plan: Plan, ph: PlannedPhase, stage: PlannedStage,
                  shape: ModelShape | None, snap: GpuSnapshot, env: Environment, *,
                  with_data: bool, world: int = 1) -> tuple[Estimate | None, dict[str, Any] | None]:
    """One stage's GPU, precision (first stage of a phase), memory, data, learning rate and schedule."""
    suffix = _suffix(plan, stage)
    cfg = stage.config
    gpu, bad = select_gpu(snap, cfg.training.gpu) if world == 1 else (_fullest(snap, world), None)
    if bad is not None:
        report.add(bad)
    apple = env.apple if gpu is None else None  # no CUDA GPU on a Mac: training runs on its GPU (mps)
    if stage.index == 0:
        report.add(_named(check_precision(ph.model, gpu, env.cpu.bf16, apple), plan, ph))
        if apple is not None:
            report.add(_named(check_apple_device(apple, ph.model), plan, ph))
    if report.selected_gpu is None and gpu is not None:
        report.selected_gpu = gpu.index
    est: Estimate | None = None
    auto: dict[str, Any] | None = None
    if shape is not None:
        ctx = MemoryContext(snap, gpu, env.cpu.ram_available_bytes, apple)
        est, auto = _memory(report, plan, f"memory{suffix}", shape, ph, stage, ctx, world, env.cpu.bf16)
    records = _data(report, f"data{suffix}", cfg, with_data)
    report.add(check_learning_rate(f"learning_rate{suffix}", cfg, full=ph.full))
    report.add(check_schedule(f"schedule{suffix}", cfg, records))
    report.add(check_warmup(f"warmup{suffix}", cfg, records))
    return est, auto


def planned_ranks(plan: Plan, snap: GpuSnapshot, ranks: int | None) -> int:
    """Training processes: --nproc-per-node, else distributed.gpus ('one', 'all' GPUs seen, or a number)."""
    if ranks is not None:
        return ranks
    wanted = plan.distributed.gpus
    if wanted == "one":
        return 1
    return max(len(snap.gpus), 1) if wanted == "all" else int(wanted)


def _fullest(snap: GpuSnapshot, world: int) -> Any:
    """The GPU with the least free memory among the ``world`` a run would use (every rank needs its share)."""
    used = snap.gpus[:world]
    return min(used, key=lambda g: g.free_bytes) if used else None


def check_ranks(world: int, snap: GpuSnapshot) -> Check:
    """Enough GPUs for the ranks (on a GPU machine), and the backend the ranks will talk through."""
    if snap.gpus and world > len(snap.gpus):
        return Check("distributed", "fail", f"{world} ranks but {len(snap.gpus)} GPU(s)",
                     f"use --nproc-per-node {len(snap.gpus)} or fewer, or distributed.gpus: all")
    backend = "nccl (one rank per GPU)" if snap.gpus else "gloo (CPU processes)"
    return Check("distributed", "pass", f"{world} ranks, {backend}; the effective batch is micro batch x "
                 f"accumulation x {world}")


def _suffix(plan: Plan, stage: PlannedStage) -> str:
    """``[phase/stage]`` after a per-stage check's name; nothing when the plan has one stage."""
    return "" if plan.stage_count == 1 else f"[{stage.label}]"


def _named(check: Check, plan: Plan, ph: PlannedPhase) -> Check:
    """A per-phase check named ``name[phase]`` when the plan has more than one phase."""
    if len(plan.phases) == 1:
        return check
    return Check(f"{check.name}[{ph.name}]", check.status, check.message, check.fix)


def _shape(source: ModelSource, report: PreflightReport, plan: Plan, ph: PlannedPhase) -> ModelShape | None:
    """The model's shape from its config.json, or a warning saying why memory cannot be estimated."""
    if source.config is None and source.kind == "missing":  # the model check fails and says why, once
        report.add(_named(Check("memory", "skip", "no model to size (see the model check)"), plan, ph))
        return None
    if source.config is None:
        report.add(_named(Check("memory", "warn", f"cannot estimate without config.json ({source.message})",
                                "make model.base a local directory with config.json, or download the hub model "
                                "into the local cache"), plan, ph))
        return None
    try:
        return model_shape(source.config)
    except NovaError as exc:
        report.add(_named(Check("memory", "warn", f"cannot estimate: {exc.message}", exc.hint or ""), plan, ph))
        return None


def _memory(report: PreflightReport, plan: Plan, name: str, shape: ModelShape, ph: PlannedPhase,
            stage: PlannedStage, ctx: MemoryContext, world: int = 1,
            cpu_bf16: bool = False) -> tuple[Estimate, dict[str, Any] | None]:
    """The memory check of one stage (per rank with several); returns its estimate and the auto-fit choice."""
    from dataclasses import replace

    cfg = stage.config
    settings = planned_settings(shape, ph, stage, on_gpu=ctx.gpu is not None, apple=ctx.apple, cpu_bf16=cpu_bf16)
    if world > 1:
        replica = replace(settings, ddp=True)
        free = ctx.gpu.free_bytes if ctx.gpu is not None else None
        fits = None if free is None else estimate_for_shape(shape, replica, CALIBRATED).upper_bytes <= free
        strategy = resolve_strategy(plan.distributed.strategy, world, fits)
        settings = replica if strategy in ("ddp", "deepspeed") else replace(settings, shard_world=world)
    check, est, auto = check_memory(name, shape, settings, cfg, ctx)
    if world > 1:
        check = Check(check.name, check.status, f"per rank, {strategy} over {world} ranks: {check.message}", check.fix)
    report.add(check)
    return est, auto


def _data(report: PreflightReport, name: str, stage: StageConfig, enabled: bool) -> int | None:
    """The data check (or its skip); returns the training record count for the schedule check."""
    if not enabled:
        report.add(Check(name, "skip", "data check turned off"))
        if not stage.data.datasets:
            return None
        from nova.data.pipeline import checked_train_records  # the dry run's own count, when it checked the data

        known = checked_train_records(stage.data, stage.method)
        return known if known is not None else count_records(stage.data)
    check, records = check_data(name, stage)
    report.add(check)
    if records is None and stage.data.datasets:
        records = count_records(stage.data)
    return records
