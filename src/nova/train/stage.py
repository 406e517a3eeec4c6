"""Run one stage of a phase: skip it if done, resume it if interrupted, recover from OOM, save it.

The stage's adapter is the phase adapter ("default") as it stands after the stage; a stage
that finished has ``stages/<stage>/adapter`` and a ``DONE`` record, written last.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from nova.config.schema import StageConfig
from nova.console import human_seconds
from nova.errors import NovaError, TrainingStopped
from nova.train.phase import PhaseContext, StageResult, _reference_adapters, save_adapter_atomic, write_json_atomic
from nova.train.resilience import (
    NonFiniteLoss,
    Recovery,
    free_memory,
    is_oom,
    latest_checkpoint,
    smaller_batch,
)

DONE = "DONE"


def run_stage(ctx: PhaseContext, model: Any, tokenizer: Any, placement: Any, name: str, stage: StageConfig,
              data: Any, index: int) -> StageResult:
    """Train (or skip, or resume) one stage and leave its adapter and DONE record."""
    stage_dir = ctx.run_dir / "stages" / name
    label = f"{ctx.phase.name}/{name}"
    if ctx.resume and (stage_dir / DONE).exists() and (stage_dir / "adapter" / "adapter_config.json").exists():
        _load_default_adapter(model, stage_dir / "adapter")
        ctx.log.say(f"[{label}] already done; continuing from its adapter")
        return StageResult(**json.loads((stage_dir / DONE).read_text()))
    checkpoints = ctx.run_dir / "checkpoints" / name
    if not ctx.resume:
        shutil.rmtree(checkpoints, ignore_errors=True)
    resume_from = latest_checkpoint(checkpoints, lambda m: ctx.log.say(f"[{label}] {m}")) if ctx.resume else None
    start_weights = _default_weights(model)  # to restart cleanly after an OOM before any checkpoint
    retries = 0
    while True:
        try:
            result = _train_once(ctx, model, tokenizer, placement, name, stage, data, index, resume_from)
            break
        except BaseException as exc:
            if not is_oom(exc) or retries >= stage.training.oom_retries:
                raise
            smaller = smaller_batch(stage.training)
            if smaller is None:
                raise NovaError(f"[{label}] out of memory at micro batch 1", hint="shorten data.max_length, "
                                "lower lora.r, or use a GPU with more memory") from None
            free_memory()
            resume_from = latest_checkpoint(checkpoints)
            if resume_from is None:
                _set_default_weights(model, start_weights)
            t = stage.training
            recovery = Recovery(_step_of(resume_from), (t.micro_batch_size, t.gradient_accumulation_steps,
                                                        t.gradient_checkpointing),
                                (smaller.micro_batch_size, smaller.gradient_accumulation_steps,
                                 smaller.gradient_checkpointing), str(resume_from) if resume_from else None)
            recovery.step = getattr(exc, "nova_step", recovery.step)
            ctx.log.say(f"[{label}] {recovery.message}")
            with (ctx.run_dir / "recoveries.jsonl").open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({"stage": name, "time": time.time(), **asdict(recovery)}) + "\n")
            stage = stage.model_copy(update={"training": smaller})
            retries += 1
    save_adapter_atomic(model, stage_dir / "adapter")
    result.settings = {"micro_batch_size": stage.training.micro_batch_size,
                       "gradient_accumulation_steps": stage.training.gradient_accumulation_steps,
                       "gradient_checkpointing": stage.training.gradient_checkpointing}
    write_json_atomic(stage_dir / DONE, asdict(result))
    _say_summary(ctx, label, result, stage_dir / "adapter")
    return result


def _train_once(ctx: PhaseContext, model: Any, tokenizer: Any, placement: Any, name: str, stage: StageConfig,
                data: Any, index: int, resume_from: Path | None) -> StageResult:
    from nova.train.trainers import TrainerHooks, build_dpo_trainer, build_sft_trainer

    label = f"{ctx.phase.name}/{name}"
    metrics = ctx.run_dir / "metrics.jsonl"
    from nova.monitor import MonitorCallback

    gpu = placement.gpu_index if placement.device == "cuda" else None
    monitor = MonitorCallback(ctx.run_dir, ctx.phase.monitor, ctx.log, name, gpu)  # per attempt: it holds state
    hooks = TrainerHooks(ctx.run_dir / "checkpoints" / name, placement, metrics, name, label, ctx.stop,
                         [monitor, *ctx.extra_callbacks])
    if stage.method == "dpo":
        trainer = build_dpo_trainer(model, tokenizer, stage, data, hooks, _reference_adapters(ctx, index))
    else:
        trainer = build_sft_trainer(model, tokenizer, stage, data, hooks)
    t = stage.training
    result = StageResult(name=name, method=stage.method)
    ctx.log.say(f"[{label}] {len(data.train)} train / {len(data.eval) if data.eval is not None else 0} eval "
                f"examples, micro batch {t.micro_batch_size} x accumulation {t.gradient_accumulation_steps} "
                f"= {t.effective_batch_size} per step, lr {t.learning_rate:g} {t.lr_scheduler}")
    if resume_from is not None:
        step = _step_of(resume_from)
        trim_metrics(metrics, name, step)
        ctx.log.say(f"[{label}] resuming from {resume_from} (step {step})")
        result.eval_loss_start = _first_eval(metrics, name)
    elif data.eval is not None:
        trim_metrics(metrics, name, -1)
        result.eval_loss_start = trainer.evaluate().get("eval_loss")
    started = time.time()
    try:
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except BaseException as exc:
        exc.nova_step = trainer.state.global_step  # type: ignore[attr-defined]
        if not is_oom(exc):
            _save_what_we_can(ctx, trainer, label, exc)
        raise
    if ctx.stop.requested:
        raise TrainingStopped(f"stopped by {ctx.stop.signal_name} at step {trainer.state.global_step} of {label}; "
                              f"checkpoint saved in {hooks.output_dir}", hint=f"to resume: {ctx.rerun_hint}")
    result.seconds = time.time() - started
    result.steps = trainer.state.global_step
    result.train_loss = _finite(output.training_loss)
    if data.eval is not None:
        final_eval = _last_eval_at(trainer.state.log_history, result.steps) or trainer.evaluate()
        result.eval_loss_end = final_eval.get("eval_loss")
        result.metrics = {k: v for k, v in final_eval.items() if isinstance(v, int | float)}
    return result


def _save_what_we_can(ctx: PhaseContext, trainer: Any, label: str, exc: BaseException) -> None:
    """An unexpected error mid-training: seal a checkpoint at the last completed step if it is new.

    Not for a non-finite loss (the weights may be about to go bad) or a user stop.
    """
    if isinstance(exc, NonFiniteLoss | TrainingStopped | KeyboardInterrupt):
        return
    step = trainer.state.global_step
    if step == 0 or (Path(trainer.args.output_dir) / f"checkpoint-{step}").exists():
        return
    try:
        trainer._save_checkpoint(trainer.model, None)
        ctx.log.say(f"[{label}] error at step {step} ({type(exc).__name__}); saved checkpoint-{step} so the run can "
                    f"resume: {ctx.rerun_hint}")
    except Exception as save_exc:  # the original error matters more
        ctx.log.say(f"[{label}] could not save a checkpoint after the error: {save_exc}")


def trim_metrics(path: Path, stage: str, after_step: int) -> None:
    """Drop this stage's metric records past ``after_step`` (they are logged again on resume)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not (json.loads(line).get("stage") == stage and json.loads(line)["step"] > after_step)]
    if after_step < 0:
        kept = [line for line in kept if json.loads(line).get("stage") != stage]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    tmp.replace(path)


def _first_eval(path: Path, stage: str) -> float | None:
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        record = json.loads(line)
        if record.get("stage") == stage and "eval_loss" in record:
            return record["eval_loss"]
    return None


def _step_of(checkpoint: Path | None) -> int:
    return int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint else 0


def _default_weights(model: Any) -> dict[str, Any]:
    from nova.lazy import require

    peft = require("peft")
    return {k: v.detach().clone() for k, v in peft.get_peft_model_state_dict(model, adapter_name="default").items()}


def _set_default_weights(model: Any, weights: dict[str, Any]) -> None:
    from nova.lazy import require

    require("peft").set_peft_model_state_dict(model, weights, adapter_name="default")


def _load_default_adapter(model: Any, adapter_dir: Path) -> None:
    from nova.lazy import require

    weights = require("safetensors.torch").load_file(str(adapter_dir / "adapter_model.safetensors"))
    _set_default_weights(model, weights)


def _last_eval_at(history: list[dict[str, Any]], step: int) -> dict[str, Any] | None:
    """The evaluation logged at ``step`` if the schedule already ran one there (no second eval pass)."""
    for record in reversed(history):
        if "eval_loss" in record and record.get("step") == step:
            return record
    return None


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _say_summary(ctx: PhaseContext, label: str, r: StageResult, adapter: Path) -> None:
    parts = [f"{r.steps} steps in {human_seconds(r.seconds)}"]
    if r.train_loss is not None:
        parts.append(f"train loss {r.train_loss:.4f}")
    if r.eval_loss_start is not None and r.eval_loss_end is not None:
        parts.append(f"eval loss {r.eval_loss_start:.4f} -> {r.eval_loss_end:.4f}")
    ctx.log.say(f"[{label}] done: {', '.join(parts)}; adapter: {adapter}")
