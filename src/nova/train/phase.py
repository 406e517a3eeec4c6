"""Run one phase: prepare every stage's data, load the model once, train the stages in order, save.

The order matters and reads top to bottom in ``run_phase``:
1. data first (validation and tokenization fail before a model is loaded);
2. the base model, quantized, with earlier phases' adapters stacked frozen;
3. each stage trains the phase's adapter and saves it under ``stages/<stage>/adapter``;
4. the last stage's adapter becomes ``adapter/`` and a ``COMPLETE`` marker is written last,
   so a phase counts as finished only when everything it promises is on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nova.config.schema import ModelConfig, PhaseConfig, StageConfig
from nova.console import RunLog
from nova.errors import NovaError
from nova.files import replace_path, write_json_atomic
from nova.model.adapters import TRAINABLE, AdapterRef, add_trainable, save_trainable, stack_frozen
from nova.train.resilience import StopRequest

COMPLETE = "COMPLETE"
STAGE_REF = "stage_start"  # frozen copy of the phase adapter as it was when a later stage began


@dataclass
class StageResult:
    name: str
    method: str
    steps: int = 0
    seconds: float = 0.0
    train_loss: float | None = None
    eval_loss_start: float | None = None
    eval_loss_end: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class PhaseResult:
    name: str
    run_dir: Path
    adapter_dir: Path
    stages: list[StageResult]
    seconds: float
    skipped: bool = False


def stage_names(phase: PhaseConfig) -> list[str]:
    """Directory names of a phase's stages: the method, numbered when it repeats (sft, dpo, sft-2)."""
    names: list[str] = []
    for stage in phase.stage_list:
        base, n = stage.method, 1
        while (base if n == 1 else f"{base}-{n}") in names:
            n += 1
        names.append(base if n == 1 else f"{base}-{n}")
    return names


def is_complete(run_dir: Path) -> bool:
    return (run_dir / COMPLETE).exists() and (run_dir / "adapter" / "adapter_config.json").exists()


def write_resolved_config(run_dir: Path, phase: PhaseConfig, model: ModelConfig,
                          chain: list[AdapterRef], extra: dict[str, Any] | None = None) -> None:
    """The config as it ran: defaults and overrides applied, the base model resolved."""
    data = phase.model_dump(mode="json")
    if phase.stages:  # the single-stage keys are unused defaults then; keep the file loadable as a config
        for key in ("method", "data", "training", "dpo"):
            data.pop(key, None)
    data["model"] = model.model_dump(mode="json")
    data["_chain"] = [{"phase": r.name, "adapter": str(r.path)} for r in chain]
    if extra:
        data["_resolved"] = extra
    (run_dir / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def save_adapter_atomic(peft_model: Any, dest: Path) -> None:
    """Save the trainable adapter to a temporary sibling and rename it into place."""
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_trainable(peft_model, tmp)
    replace_path(tmp, dest)


@dataclass
class PhaseContext:
    """Everything a phase run needs that is not in its config."""

    phase: PhaseConfig
    model_cfg: ModelConfig
    run_dir: Path
    chain: list[AdapterRef]
    log: RunLog
    resume: bool = True
    stop: StopRequest = field(default_factory=StopRequest)
    rerun_hint: str = "rerun the same nova train command"
    extra_callbacks: list[Any] = field(default_factory=list)


def prepare_all_data(ctx: PhaseContext, tokenizer: Any) -> list[Any]:
    """Validate and tokenize every stage's data before any weights load (and before anything is written)."""
    from nova.data import prepare_stage_data

    prepared = []
    for name, stage in zip(stage_names(ctx.phase), ctx.phase.stage_list, strict=True):
        if not stage.data.datasets:
            raise NovaError(f"phase '{ctx.phase.name}' stage '{name}' has no data.datasets",
                            hint="add at least one data source")
        data = prepare_stage_data(stage.data, tokenizer, method=stage.method, seed=stage.training.seed,
                                  dpo=stage.dpo)
        ctx.log.say(f"[{ctx.phase.name}/{name}] data:")
        for line in data.report.lines():
            ctx.log.say(f"  {line}")
        prepared.append(data)
    return prepared


def auto_fit_stages(ctx: PhaseContext, source: str, placement: Any,
                    budget_bytes: int | None = None) -> tuple[list[StageConfig], dict[str, Any]]:
    """Apply ``training.auto_fit``: per stage, the micro batch, accumulation and checkpointing that fit
    the GPU's free memory (measured now, before the model loads), same effective batch.

    Returns the stages to run and, per stage name, what was chosen and why (recorded in config.yaml).
    """
    stages = list(ctx.phase.stage_list)
    if not any(s.training.auto_fit for s in stages):
        return stages, {}
    if placement.device != "cuda" and budget_bytes is None:
        ctx.log.say(f"[{ctx.phase.name}] auto_fit: no GPU, keeping the configured batch settings")
        return stages, {}
    if budget_bytes is None:
        from nova.lazy import require

        budget_bytes = int(require("torch").cuda.mem_get_info(placement.gpu_index)[0])
    from nova.preflight import fit_stage

    model_config = json.loads((Path(source) / "config.json").read_text()) if Path(source).is_dir() else None
    if model_config is None:
        ctx.log.say(f"[{ctx.phase.name}] auto_fit: no local config.json for {source}; keeping the batch settings")
        return stages, {}
    fits: dict[str, Any] = {}
    out = []
    for name, stage in zip(stage_names(ctx.phase), stages, strict=True):
        if not stage.training.auto_fit:
            out.append(stage)
            continue
        choice = fit_stage(model_config, ctx.model_cfg, ctx.phase.lora, stage, budget_bytes)
        fits[name] = choice.to_dict()
        ctx.log.say(f"[{ctx.phase.name}/{name}] auto_fit: {choice.reason}")
        if not choice.fits:
            raise NovaError(f"auto_fit: stage {name} does not fit: {choice.reason}")
        training = stage.training.model_copy(update={
            "micro_batch_size": choice.micro_batch_size,
            "gradient_accumulation_steps": choice.gradient_accumulation_steps,
            "gradient_checkpointing": choice.gradient_checkpointing})
        out.append(stage.model_copy(update={"training": training}))
    return out, fits


def _write_data_reports(ctx: PhaseContext, datasets: list[Any]) -> None:
    for name, data in zip(stage_names(ctx.phase), datasets, strict=True):
        stage_dir = ctx.run_dir / "stages" / name
        stage_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(stage_dir / "data_report.json", data.report.to_dict())


def run_phase(ctx: PhaseContext, on_start: Callable[[], None] | None = None) -> PhaseResult:
    """Train all stages of one phase and leave ``adapter/`` plus ``COMPLETE`` in its run directory.

    ``on_start`` is called once the inputs are valid, just before the first write.
    """
    from nova.model.loading import choose_placement, load_tokenizer, resolve_base

    started = time.time()
    source = resolve_base(ctx.model_cfg)
    placement = choose_placement(ctx.model_cfg.compute_dtype, ctx.phase.stage_list[0].training.gpu)
    tokenizer = load_tokenizer(ctx.model_cfg, source)
    datasets = prepare_all_data(ctx, tokenizer)
    stages, fits = auto_fit_stages(ctx, source, placement)

    if on_start is not None:
        on_start()
    ctx.log.attach()
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    (ctx.run_dir / COMPLETE).unlink(missing_ok=True)
    if not ctx.resume:  # --fresh or --force: forget earlier attempts of this phase
        for old in ("checkpoints", "stages", "metrics.jsonl", "recoveries.jsonl", "alerts.jsonl"):
            target = ctx.run_dir / old
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
    pid_file = ctx.run_dir / "nova.pid"
    write_json_atomic(pid_file, {"pid": os.getpid(), "started": time.time(), "host": socket.gethostname()})
    try:
        return _train_phase(ctx, tokenizer, placement, source, datasets, stages, fits, started)
    finally:
        pid_file.unlink(missing_ok=True)


def _train_phase(ctx: PhaseContext, tokenizer: Any, placement: Any, source: str, datasets: list[Any],
                 stages: list[StageConfig], fits: dict[str, Any], started: float) -> PhaseResult:
    from nova.model.loading import load_base_model
    from nova.train.stage import run_stage

    write_resolved_config(ctx.run_dir, ctx.phase, ctx.model_cfg, ctx.chain,
                          {"device": placement.device, "compute_dtype": placement.dtype_name, "base": source,
                           "auto_fit": fits or None})
    _write_data_reports(ctx, datasets)

    ctx.log.say(f"[{ctx.phase.name}] loading {source} ({ctx.model_cfg.quantization}, {placement.dtype_name}, "
                f"{placement.device})" + (f" + frozen adapters: {', '.join(r.name for r in ctx.chain)}"
                                          if ctx.chain else ""))
    base = load_base_model(ctx.model_cfg, placement, source)
    from nova.lazy import require

    require("transformers").set_seed(stages[0].training.seed)  # the new adapter's initial weights
    model = _prepare_for_training(base, ctx)
    results = []
    for index, (name, stage, data) in enumerate(zip(stage_names(ctx.phase), stages, datasets, strict=True)):
        if index > 0:
            _freeze_stage_start(model, ctx.run_dir / "stages" / stage_names(ctx.phase)[index - 1] / "adapter")
        results.append(run_stage(ctx, model, tokenizer, placement, name, stage, data, index))

    final = ctx.run_dir / "adapter"
    last_stage_adapter = ctx.run_dir / "stages" / stage_names(ctx.phase)[-1] / "adapter"
    tmp = final.with_name("adapter.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(last_stage_adapter, tmp)
    replace_path(tmp, final)
    seconds = time.time() - started
    result = PhaseResult(ctx.phase.name, ctx.run_dir, final, results, seconds)
    _smoke_prompts(ctx, model, tokenizer)
    write_json_atomic(ctx.run_dir / COMPLETE, {
        "phase": ctx.phase.name, "finished": time.time(), "seconds": round(seconds, 1),
        "stages": [r.__dict__ for r in results], "adapter": str(final),
    })
    return result


def _prepare_for_training(base: Any, ctx: PhaseContext) -> Any:
    """Stack the chain's adapters and add the trainable one.

    PEFT's prepare_model_for_kbit_training is deliberately not used: it upcasts embeddings,
    lm_head and norms to fp32 (about +2 GiB on an 8B model) and so makes the residual stream
    fp32, which the preflight memory model (calibrated on bf16 activations) would not expect.
    Frozen base weights plus input gradients for checkpointing are all QLoRA needs.
    """
    base.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    return add_trainable(base, ctx.phase.lora, ctx.chain)


def _freeze_stage_start(model: Any, adapter_dir: Path) -> None:
    """Keep a frozen copy of the phase adapter as the next stage starts (the DPO reference)."""
    from nova.model.adapters import activate

    if STAGE_REF in model.peft_config:
        model.delete_adapter(STAGE_REF)
    model.load_adapter(str(adapter_dir), adapter_name=STAGE_REF, is_trainable=False)
    active = [n for n in model.peft_config if n not in (STAGE_REF, TRAINABLE)] + [TRAINABLE]
    activate(model, active, trainable=[TRAINABLE])


def _reference_adapters(ctx: PhaseContext, index: int) -> list[str]:
    """The DPO reference: earlier phases, plus this phase's adapter as it was when the stage began."""
    names = [r.name for r in ctx.chain]
    return [*names, STAGE_REF] if index > 0 else names


def _smoke_prompts(ctx: PhaseContext, model: Any, tokenizer: Any) -> None:
    """Answer the config's smoke prompts with the tuned model and save them beside the adapter."""
    if not ctx.phase.smoke_prompts:
        return
    from nova.infer import generate_answers

    answers = generate_answers(model, tokenizer, ctx.phase.smoke_prompts, max_new_tokens=64)
    with (ctx.run_dir / "smoke.jsonl").open("w", encoding="utf-8") as fh:
        for prompt, answer in zip(ctx.phase.smoke_prompts, answers, strict=True):
            fh.write(json.dumps({"prompt": prompt, "answer": answer}) + "\n")
            ctx.log.say(f"[{ctx.phase.name}] smoke: {prompt!r} -> {answer[:200]!r}")


def chain_refs(run_dirs: list[tuple[str, Path]]) -> list[AdapterRef]:
    """Adapter references for the earlier phases of a chain (their run directories must be complete)."""
    refs = []
    for name, run_dir in run_dirs:
        if not is_complete(run_dir):
            raise NovaError(f"phase '{name}' has not finished: no complete adapter in {run_dir}",
                            hint=f"train it first (nova train --config PIPELINE --phase {name})")
        refs.append(AdapterRef(name, run_dir / "adapter"))
    return refs


__all__ = ["COMPLETE", "PhaseContext", "PhaseResult", "chain_refs", "is_complete", "run_phase", "stack_frozen"]
