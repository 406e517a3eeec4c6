"""``nova train --dry-run``: validate config, data and model access, and print the plan; train nothing."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from nova.config.load import LoadedConfig
from nova.config.schema import ModelConfig
from nova.errors import NovaError
from nova.files import looks_like_local_path
from nova.model.trained import trained_kind
from nova.plan import Plan, PlannedStage, make_plan


@dataclass
class DryRun:
    lines: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing


def model_access(model: ModelConfig) -> str | None:
    """None when the base model can be loaded here, else what is missing (no network calls)."""
    base = model.base
    path = Path(base).expanduser()
    if base.lower().endswith(".gguf"):
        return None if path.is_file() else f"GGUF file {base} not found"
    if path.exists():
        return None if (path / "config.json").exists() else f"{base} has no config.json"
    if looks_like_local_path(base):
        return f"model directory {base} not found"
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(base, "config.json", revision=model.revision)
    except Exception:  # an unusual cache layout is not a reason to crash a dry run
        cached = None
    if isinstance(cached, str):
        return None
    offline = " (HF_HUB_OFFLINE=1)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
    return (f"model {base}: no local directory of that name, and not in the local hub cache{offline}; "
            "download it where the hub is reachable, or point model.base at a local copy "
            "(the demo model comes from scripts/setup.sh)")


def dry_run(loaded: LoadedConfig, phase: str | None = None, *, preflight: bool = True,
            plan: Plan | None = None) -> DryRun:
    """The plan of ``loaded`` (``plan``: already made), checked: model access, data, and preflight's view."""
    out = DryRun()
    tokenizers: dict[str, tuple[object, str | None]] = {}
    try:
        whole = plan or make_plan(loaded)
    except NovaError as exc:  # e.g. a phase file with start_from, which needs its pipeline
        out.lines.append(f"config {loaded.path}: a valid phase config that cannot run on its own")
        out.missing.extend(exc.lines())
        return out
    plan = whole.select(phase)  # a --phase that names no phase is a usage error, as it is for training
    names = [p.name for p in plan.pipeline.phases]
    what = (f"pipeline of {len(names)} phase{'s' if len(names) > 1 else ''} ({', '.join(names)})"
            if plan.is_pipeline else f"phase {names[0]}")
    out.lines.append(f"config {loaded.path}: {what}, valid")
    for item in plan.phases:
        model = item.model
        status = "finished, would be skipped" if item.run.is_complete else "would train"
        start = f"from phase {item.phase.start_from}" if item.phase.start_from else f"from base {model.base}"
        out.lines.append(f"phase {item.name} ({status}) -> {item.run_dir}")
        if item.start_model is not None:
            start += f" (base: its model directory {item.base_model.base})"
        trains = trained_kind(item.full).describe(item.phase.lora)
        out.lines.append(f"  starts {start}; {model.quantization} base, {trains}")
        problem = model_access(model)
        if problem and not preflight:  # else preflight's model check says it, once, with a did-you-mean
            out.missing.append(f"phase {item.name}: {problem}")
        for stage in item.stages:
            t = stage.config.training
            steps = f"{t.max_steps} steps" if t.max_steps else f"{t.num_epochs:g} epoch(s)"
            out.lines.append(f"  stage {stage.label}: {steps}, micro batch {t.micro_batch_size} x accumulation "
                             f"{t.gradient_accumulation_steps} = {t.effective_batch_size}, lr {t.learning_rate:g} "
                             f"{t.lr_scheduler}, {len(stage.config.data.datasets)} data source(s)")
            out.lines.extend(_data_lines(stage, out, item.base_model, tokenizers))
    if preflight:
        _preflight_lines(loaded, whole, out)
    return out


def _preflight_lines(loaded: LoadedConfig, plan: Plan, out: DryRun) -> None:
    """The hardware side of the plan: GPUs, memory, environment (data was checked above)."""
    from nova.preflight import run_preflight

    report = run_preflight(loaded, check_data=False, plan=plan)
    out.lines.append(f"preflight: {report.verdict}")
    for check in report.checks:
        if check.status == "warn":
            out.lines.append(f"  warn {check.name}: {check.message}" + (f" (fix: {check.fix})" if check.fix else ""))
        elif check.status == "fail":
            out.missing.append(f"{check.name}: {check.message}" + (f" (fix: {check.fix})" if check.fix else ""))


def _data_lines(stage: PlannedStage, out: DryRun, model: ModelConfig,
                tokenizers: dict[str, tuple[object, str | None]]) -> list[str]:
    from nova.data import check_data
    from nova.train.phase import check_before_loading

    cfg = stage.config
    if not cfg.data.datasets:
        out.missing.append(f"stage {stage.label} has no data.datasets")
        return ["    data: none configured"]
    try:  # the method's own check before loading, running no user code (GRPO: reward files parsed, not imported)
        check_before_loading(stage, run_code=False)
    except NovaError as exc:
        out.missing.extend(exc.lines())
    tokenizer, note = _tokenizer(model, tokenizers)
    try:
        report = check_data(cfg.data, method=cfg.method, dpo=cfg.length_settings, tokenizer=tokenizer,
                            seed=cfg.training.seed)
    except NovaError as exc:
        out.missing.extend(exc.lines())
        return ["    data: INVALID (see below)"]
    if note:
        report.token_note = note
    return [f"    {line}" for line in report.lines()]


def _tokenizer(model: ModelConfig, cache: dict[str, tuple[object, str | None]]) -> tuple[object, str | None]:
    """The base's tokenizer when it is on this machine (the token view: lengths, truncation, trained tokens),
    else why not; never the network (a dry run must answer offline), once per model."""
    if model.base not in cache:
        from nova.model.loading import tokenizer_for_check

        cache[model.base] = (tokenizer_for_check(model) if model_access(model) is None
                             else (None, f"the model {model.base} is not on this machine"))
    return cache[model.base]
