"""Run one stage of a phase: skip it if done, resume it if interrupted, recover from OOM, save it.

The stage's adapter is the phase adapter ("default") as it stands after the stage (full fine-tuning:
the model); a stage that finished has ``stages/<stage>/adapter`` (``model``) and a ``DONE`` record,
written last. The method's trainer is the one its spec names (nova.methods); nothing here asks which
method, or which kind of training (nova.model.trained), a stage has.
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
from nova.console import human_seconds, task
from nova.errors import NovaError, TrainingStopped
from nova.files import atomic_dir, os_error, write_json_atomic
from nova.model.trained import restore, save_trained, snapshot
from nova.runs.checkpoints import checkpoint_step, clean_leftovers, latest_checkpoint, move_aside
from nova.runs.jsonl import append_jsonl, read_jsonl, trim_metrics
from nova.train.context import StageResult, StageRun
from nova.train.machinery import distributed
from nova.train.machinery.resilience import NonFiniteLoss, Recovery, free_memory, is_oom, smaller_batch
from nova.train.machinery.strategy import release_engine, shard_check, whole_adapter, whole_trainable


def run_stage(run: StageRun) -> StageResult:
    """Train (or skip, or resume) one stage and leave its adapter and DONE record."""
    phase, stage = run.phase, run.stage
    rd = phase.run
    if phase.resume and rd.stage_is_done(stage.name):  # its fingerprint was checked before the model loaded
        restore(run.model, phase.kind.stage_output(rd, stage.name))
        run.say(f"already done; continuing from its {phase.kind.noun}")
        record = json.loads(rd.stage_done(stage.name).read_text(encoding="utf-8"))
        return StageResult(**{k: v for k, v in record.items() if k != "fingerprint"})
    checkpoints = rd.checkpoints(stage.name)
    ranks = phase.ranks
    if not phase.resume and checkpoints.exists():
        distributed.on_main(ranks, lambda: shutil.rmtree(checkpoints))
    resume_from, change = distributed.on_main(ranks, lambda: _resume_point(run)) if phase.resume else (None, {})
    lr = change.get("training.learning_rate")  # --resume-with-changes: the new peak rate from the resumed step
    lr_override = float(lr[1]) if lr else None
    start_weights = snapshot(run.model)  # to restart cleanly after an OOM before any checkpoint
    config = stage.config
    retries = 0
    while True:
        try:
            result = _train_once(run, config, resume_from, lr_override)
            break
        except BaseException as exc:
            if not is_oom(exc) or retries >= config.training.oom_retries:
                raise
            if ranks.distributed:  # the other ranks are in a collective: restart all of them smaller
                raise NovaError(f"[{run.label}] out of memory on rank {ranks.rank} at step "
                                f"{run.memo.get('last_step', 0)}", hint=f"resume with a smaller "
                                "training.micro_batch_size (the same effective batch through "
                                f"gradient_accumulation_steps): {phase.rerun_hint}") from None
            config = _recover_from_oom(run, config, start_weights)
            resume_from = latest_checkpoint(checkpoints)
            retries += 1
    whole = whole_trainable(run.model)  # every rank: FSDP2 or ZeRO-3 shards gathered (None if not sharded)
    distributed.on_main(ranks, lambda: _save_stage(run, config, result, whole))
    if phase.stop.requested:  # it came during the last step: the stage is finished and saved, then the run stops
        raise TrainingStopped(f"stopped by {phase.stop.signal_name} after the last step of {run.label}: its "
                              f"{phase.kind.noun} is saved in {phase.kind.stage_output(rd, stage.name)}; skipped: "
                              "the rest of the phase (later stages, smoke prompts, COMPLETE)",
                              hint=f"to finish (nothing trained is trained again): {phase.rerun_hint}")
    return result


def _save_stage(run: StageRun, config: StageConfig, result: StageResult, whole: dict[str, Any] | None = None) -> None:
    """The stage's adapter, then its DONE record (last: a stage counts as done only with both)."""
    rd, name = run.phase.run, run.stage.name
    out = run.phase.kind.stage_output(rd, name)
    with atomic_dir(out, check=False) as tmp:
        save_trained(run.model, tmp, base=run.phase.model_cfg.base, tokenizer=run.tokenizer, state_dict=whole)
    t = config.training
    result.settings = {"micro_batch_size": t.micro_batch_size, "gradient_accumulation_steps":
                       t.gradient_accumulation_steps, "gradient_checkpointing": t.gradient_checkpointing,
                       "world_size": run.phase.ranks.world}
    write_json_atomic(rd.stage_done(name), {**asdict(result), "fingerprint": run.fingerprint.to_dict()})
    _say_summary(run, result, out)


def _resume_point(run: StageRun) -> tuple[Path | None, dict[str, Any]]:
    """The checkpoint to resume from: the newest one that is complete, loads, and was trained with
    the settings asked for now (broken ones are moved aside, with a message, for the next older);
    and the --resume-with-changes changes it takes."""
    from nova.train.fingerprint import check_checkpoint

    root = run.phase.run.checkpoints(run.stage.name)
    clean_leftovers(root)
    while (found := latest_checkpoint(root, run.say)) is not None:
        problem = _load_problem(found)
        if problem is None:
            return found, check_checkpoint(run.stage, found, run.fingerprint, run.phase.resume_with_changes)
        move_aside(found, problem, run.say)
    return None, {}


def _load_problem(checkpoint: Path) -> str | None:
    """None when the optimizer and scheduler states load (files over 1 GiB: their sealed size is trusted)."""
    from nova.lazy import require

    torch = require("torch")
    for name in ("optimizer.pt", "optimizer.bin", "scheduler.pt"):  # .bin: FSDP's (nova.runs.checkpoints)
        path = checkpoint / name
        if not path.exists() or path.stat().st_size > 1024**3:
            continue
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged pickle fails in many ways
            return f"{name} does not load ({type(exc).__name__})"
    return None


def _recover_from_oom(run: StageRun, config: StageConfig, start_weights: dict[str, Any]) -> StageConfig:
    """Half the micro batch, double accumulation (same effective batch), resume from the last checkpoint."""
    smaller = smaller_batch(config.training, minimum=config.min_micro_batch)  # KTO's KL term needs two
    if smaller is None:
        raise NovaError(f"[{run.label}] out of memory at micro batch {config.training.micro_batch_size}",
                        hint="shorten data.max_length, "
                        "lower lora.r, or use a GPU with more memory") from None
    free_memory()
    resume_from = latest_checkpoint(run.phase.run.checkpoints(run.stage.name))
    if resume_from is None or not run.phase.kind.resumes_in_place:
        restore(run.model, start_weights)
    t = config.training
    recovery = Recovery(run.memo.get("last_step", 0),
                        (t.micro_batch_size, t.gradient_accumulation_steps, t.gradient_checkpointing),
                        (smaller.micro_batch_size, smaller.gradient_accumulation_steps,
                         smaller.gradient_checkpointing), str(resume_from) if resume_from else None)
    run.say(recovery.message)
    append_jsonl(run.phase.run.recoveries, {"stage": run.stage.name, "time": time.time(), **asdict(recovery)})
    return config.changed(training=smaller)


def _train_once(run: StageRun, config: StageConfig, resume_from: Path | None,
                lr_override: float | None) -> StageResult:
    from nova.lazy import resolve
    from nova.model.adapters import keep_trainable_fp32
    from nova.monitor import MonitorCallback
    from nova.train.methods.common import TrainerHooks, TrainerInputs

    phase, stage = run.phase, run.stage
    metrics = phase.run.metrics
    gpu = run.placement.gpu_index if run.placement.device == "cuda" else None
    monitor = MonitorCallback(phase.run_dir, phase.phase.monitor, phase.log, stage.name, gpu,  # per attempt: state
                              method=config.method)
    hooks = TrainerHooks(phase.run.checkpoints(stage.name), run.placement, metrics, stage.name, run.label, phase.stop,
                         [monitor, *phase.extra_callbacks], stage_strategy(phase, config, run.placement))
    inputs = TrainerInputs(run.model, run.tokenizer, config, run.data, hooks, run.reference, run.say, run.memo)
    # TRL casts a 4-bit model's adapter to bf16, and copies it whole into a reference adapter (ZeRO-3: gathered)
    with task("preparing the trainer", quiet=True), keep_trainable_fp32(run.model), whole_adapter(run.model):
        trainer = resolve(config.spec.trainer)(inputs)  # the method's trainer
    if hooks.strategy.name != "single":
        run.say(hooks.strategy.describe(phase.ranks.world))
    if hooks.strategy.name == "fsdp":
        trainer.add_callback(shard_check(run.say))
    trainer.nova_fingerprint = run.fingerprint.to_dict()
    trainer.nova_lr_override = lr_override if resume_from is not None else None
    t = config.training
    result = StageResult(name=stage.name, method=config.method)
    evals = len(run.data.eval) if run.data.eval is not None else 0
    run.say(f"{len(run.data.train)} train / {evals} eval examples, micro batch {t.micro_batch_size} x accumulation "
            f"{t.gradient_accumulation_steps} = {t.effective_batch_size} per step, lr {t.learning_rate:g} "
            f"{t.lr_scheduler}")
    if resume_from is not None:
        step = checkpoint_step(resume_from)
        torn = trim_metrics(metrics, stage.name, step)
        if torn:
            run.say(f"{metrics.name}: skipped {torn} unreadable line(s) (torn by a crash)")
        run.say(f"resuming from {resume_from} (step {step})")
        result.eval_loss_start = _first_eval(metrics, stage.name)
    elif run.data.eval is not None:
        trim_metrics(metrics, stage.name, -1)
        result.eval_loss_start = trainer.evaluate().get("eval_loss")
    else:
        trim_metrics(metrics, stage.name, -1)
    started = time.time()
    try:
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except BaseException as exc:
        run.memo["last_step"] = trainer.state.global_step
        fault = os_error(exc, hooks.output_dir) if isinstance(exc, Exception) else None
        if fault is not None:  # a full disk or read-only filesystem while saving: no second save is tried
            raise NovaError(f"[{run.label}] {fault.message}", hint=f"{fault.hint}; the newest complete checkpoint "
                            f"is kept and a resume starts from it: {phase.rerun_hint}") from exc
        if not is_oom(exc) and not phase.ranks.distributed:  # saving takes every rank; the others are stuck
            _save_what_we_can(run, trainer, exc)
        raise
    finally:
        phase.stop.saving = False  # no step under way: a signal from here on stops at once
    if phase.stop.requested and trainer.state.global_step < trainer.state.max_steps:
        raise TrainingStopped(f"stopped by {phase.stop.signal_name} at step {trainer.state.global_step} of "
                              f"{run.label}; checkpoint saved in {hooks.output_dir}",
                              hint=f"to resume: {phase.rerun_hint}")
    result.seconds = time.time() - started
    result.steps = trainer.state.global_step
    result.train_loss = _finite(output.training_loss)
    if run.data.eval is not None:
        final_eval = _last_eval_at(trainer.state.log_history, result.steps) or trainer.evaluate()
        result.eval_loss_end = final_eval.get("eval_loss")
        result.metrics = {k: v for k, v in final_eval.items() if isinstance(v, int | float)}
    release_engine(trainer, hooks.strategy)  # a later stage builds its own engine on the same model
    return result


def stage_strategy(phase: Any, config: StageConfig, placement: Any) -> Any:
    """The distributed engine of this stage (nothing in one process)."""
    from nova.lazy import require
    from nova.train.machinery.strategy import strategy_for

    torch = require("torch")
    return strategy_for(phase.distributed, phase.ranks.world, phase.model_cfg, config, cuda=placement.device == "cuda",
                        bf16=placement.compute_dtype == torch.bfloat16, fp16=placement.compute_dtype == torch.float16)


def _save_what_we_can(run: StageRun, trainer: Any, exc: BaseException) -> None:
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
        run.say(f"error at step {step} ({type(exc).__name__}); saved checkpoint-{step} so the run can resume: "
                f"{run.phase.rerun_hint}")
    except Exception as save_exc:  # the original error matters more
        run.say(f"could not save a checkpoint after the error: {save_exc}")


def _first_eval(path: Path, stage: str) -> float | None:
    for record in read_jsonl(path):
        if record.get("stage") == stage and "eval_loss" in record:
            return float(record["eval_loss"])
    return None


def _last_eval_at(history: list[dict[str, Any]], step: int) -> dict[str, Any] | None:
    """The evaluation logged at ``step`` if the schedule already ran one there (no second eval pass)."""
    for record in reversed(history):
        if "eval_loss" in record and record.get("step") == step:
            return record
    return None


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _say_summary(run: StageRun, r: StageResult, adapter: Path) -> None:
    parts = [f"{r.steps} steps in {human_seconds(r.seconds)}"]
    if r.train_loss is not None:
        parts.append(f"train loss {r.train_loss:.4f}")
    if r.eval_loss_start is not None and r.eval_loss_end is not None:
        parts.append(f"eval loss {r.eval_loss_start:.4f} -> {r.eval_loss_end:.4f}")
    run.say(f"done: {', '.join(parts)}; {run.phase.kind.noun}: {adapter}")
