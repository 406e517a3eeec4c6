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
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from nova.config.schema import StageConfig
from nova.errors import NovaError
from nova.files import atomic_dir, write_json_atomic, write_text_atomic
from nova.model.adapters import TRAINABLE, add_trainable
from nova.plan import PlannedPhase
from nova.runs.layout import ATTEMPT_STATE
from nova.runs.lock import check_run_dir, locked, mark_run_dir
from nova.runs.record import resolved_config, write_run_config
from nova.train import distributed
from nova.train.context import STAGE_REF, PhaseContext, PhaseResult, StageRun


def prepare_all_data(ctx: PhaseContext, tokenizer: Any) -> list[Any]:
    """Validate and tokenize every stage's data before any weights load (and before anything is written),
    with the earlier phases' data mixed in where ``retention.replay`` asks for it."""
    from nova.data import prepare_stage_data
    from nova.train.retention import add_replay

    prepared = []
    for stage in ctx.planned.stages:
        cfg = stage.config
        if not cfg.data.datasets:
            raise NovaError(f"stage {stage.label} has no data.datasets", hint="add at least one data source")
        if cfg.method == "grpo":  # the user's reward files are imported now: a missing function fails here
            from nova.train.rewards import build_rewards

            build_rewards(cfg.grpo, f"stages[{stage.index}].grpo.rewards" if ctx.phase.stages else "grpo.rewards")
        prepared.append(prepare_stage_data(cfg.data, tokenizer, method=cfg.method, seed=cfg.training.seed,
                                           dpo=cfg.length_settings))
    prepared = add_replay(ctx, tokenizer, prepared)
    for stage, data in zip(ctx.planned.stages, prepared, strict=True):
        ctx.log.say(f"[{stage.label}] data:")
        for line in data.report.lines():
            ctx.log.say(f"  {line}")
    return prepared


def auto_fit_stages(ctx: PhaseContext, source: str, placement: Any,
                    budget_bytes: int | None = None) -> tuple[PlannedPhase, dict[str, Any]]:
    """Apply ``training.auto_fit``: per stage, the micro batch, accumulation and checkpointing that fit
    the GPU's free memory (measured now, before the model loads), same effective batch.

    Returns the phase with the stages to run and, per stage name, what was chosen and why (recorded
    in config.yaml). The changed settings are validated like a user's config.
    """
    planned = ctx.planned
    if not any(s.config.training.auto_fit for s in planned.stages):
        return planned, {}
    if placement.device != "cuda" and budget_bytes is None:
        ctx.log.say(f"[{planned.name}] auto_fit: no GPU, keeping the configured batch settings")
        return planned, {}
    if budget_bytes is None:
        from nova.lazy import require

        budget_bytes = int(require("torch").cuda.mem_get_info(placement.gpu_index)[0])
    from nova.preflight import fit_stage

    config_file = Path(source) / "config.json"
    model_config = json.loads(config_file.read_text(encoding="utf-8")) if Path(source).is_dir() else None
    if model_config is None:
        ctx.log.say(f"[{planned.name}] auto_fit: no local config.json for {source}; keeping the batch settings")
        return planned, {}
    fits: dict[str, Any] = {}
    configs: list[StageConfig] = []
    for stage in planned.stages:
        cfg = stage.config
        if not cfg.training.auto_fit:
            configs.append(cfg)
            continue
        choice = fit_stage(model_config, planned.model, planned.phase.lora, cfg, budget_bytes, full=planned.full)
        fits[stage.name] = choice.to_dict()
        ctx.log.say(f"[{stage.label}] auto_fit: {choice.reason}")
        if not choice.fits:
            raise NovaError(f"auto_fit: stage {stage.label} does not fit: {choice.reason}")
        training = cfg.training.changed(micro_batch_size=choice.micro_batch_size,
                                        gradient_accumulation_steps=choice.gradient_accumulation_steps,
                                        gradient_checkpointing=choice.gradient_checkpointing)
        configs.append(cfg.changed(training=training))
    return planned.with_stage_configs(configs), fits


def _write_data_reports(ctx: PhaseContext, datasets: list[Any]) -> None:
    for stage, data in zip(ctx.planned.stages, datasets, strict=True):
        write_json_atomic(ctx.run.data_report(stage.name), data.report.to_dict())


def _forget_earlier_attempt(ctx: PhaseContext) -> None:
    """--fresh or --force: remove what an earlier attempt of this phase left (in nova's own directory,
    under its lock); a delete that fails is an error, never ignored."""
    for name in ATTEMPT_STATE:
        target = ctx.run_dir / name
        try:
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        except OSError as exc:
            raise NovaError(f"cannot delete {target} of an earlier attempt: {exc.strerror or exc}",
                            hint="remove it by hand, then run again") from None


def phase_fingerprints(ctx: PhaseContext) -> tuple[str, Any, Any, list[Any]]:
    """(source, placement, tokenizer, fingerprints): what a phase is, before any weights load."""
    from nova.model.loading import choose_placement, load_tokenizer, resolve_base
    from nova.train.fingerprint import compute_fingerprints

    source = resolve_base(ctx.model_cfg)
    gpu = ctx.ranks.local_rank if ctx.ranks.distributed else ctx.planned.stages[0].config.training.gpu
    placement = choose_placement(ctx.model_cfg.compute_dtype, gpu)
    tokenizer = load_tokenizer(ctx.model_cfg, source)
    return source, placement, tokenizer, compute_fingerprints(ctx, source, placement.dtype_name, tokenizer)


def run_phase(ctx: PhaseContext, on_start: Callable[[], None] | None = None) -> PhaseResult:
    """Train all stages of one phase and leave ``adapter/`` plus ``COMPLETE`` in its run directory.

    The run directory is locked for the whole phase (a second nova train on it is refused) and
    must be nova's own. ``on_start`` is called once the inputs are valid, just before the first
    write. Earlier work is reused only when it was trained with the settings asked for now
    (nova.train.fingerprint). In a distributed run every rank validates, rank 0 alone writes.
    """
    with ExitStack() as stack:
        def claim() -> None:
            stack.enter_context(locked(ctx.run_dir, "run directory"))
            check_run_dir(ctx.run)

        distributed.on_main(ctx.ranks, claim)
        return _run_locked(ctx, on_start)


def _run_locked(ctx: PhaseContext, on_start: Callable[[], None] | None) -> PhaseResult:
    from nova.train.fingerprint import check_reuse, keep_effective_batch

    started = time.time()
    ranks = ctx.ranks
    source, placement, tokenizer, ctx.fingerprints = phase_fingerprints(ctx)
    if ctx.planned.full:  # before anything is written or loaded
        from nova.train.full import check_full_placement

        check_full_placement(placement)
    if ctx.resume and (notes := keep_effective_batch(ctx)):  # fewer or more ranks than the checkpoint had
        for note in notes:
            ctx.log.say(note)
        source, placement, tokenizer, ctx.fingerprints = phase_fingerprints(ctx)
    if ctx.resume:
        ctx.changes = check_reuse(ctx)
    with distributed.main_first(ranks):  # rank 0 fills the data cache, the others read it
        datasets = prepare_all_data(ctx, tokenizer)
        retention = _holdouts(ctx, tokenizer, datasets)
    # one decision for all ranks (each GPU's free memory differs)
    ctx.planned, fits = distributed.on_main(ranks, lambda: auto_fit_stages(ctx, source, placement))

    def first_writes() -> None:
        if on_start is not None:
            on_start()
        ctx.log.attach()
        mark_run_dir(ctx.run)
        ctx.run.complete_marker.unlink(missing_ok=True)
        if not ctx.resume:
            _forget_earlier_attempt(ctx)

    distributed.on_main(ranks, first_writes)
    return _train_phase(ctx, tokenizer, placement, source, (datasets, retention), fits, started)


def _holdouts(ctx: PhaseContext, tokenizer: Any, datasets: list[Any]) -> Any:
    """The holdout sets the forgetting table scores after the last stage (nova.train.retention)."""
    from nova.train.retention import Retention

    return Retention.prepare(ctx, tokenizer, datasets)


def _resolved(ctx: PhaseContext, placement: Any, source: str, fits: dict[str, Any]) -> dict[str, Any]:
    """The ``_resolved`` part of config.yaml, keeping the record of earlier resumes with changes."""
    earlier: list[Any] = []
    if ctx.resume and ctx.run.config.is_file():
        from nova.runs.record import read_run

        try:
            earlier = list(read_run(ctx.run_dir).resolved.get("resumed_with_changes") or [])
        except NovaError:
            earlier = []
    applied = [{"stage": name, **change} for name, change in ctx.changes.items()]
    for change in applied:
        ctx.log.say(f"[{ctx.phase.name}/{change['stage']}] resuming with changes: " + ", ".join(
            f"{k} {v[0]} -> {v[1]}" for k, v in change.items() if isinstance(v, list)))
    return {"device": placement.device, "compute_dtype": placement.dtype_name, "base": source,
            "auto_fit": fits or None, "resumed_with_changes": (earlier + applied) or None}


def _train_phase(ctx: PhaseContext, tokenizer: Any, placement: Any, source: str, data: tuple[list[Any], Any],
                 fits: dict[str, Any], started: float) -> PhaseResult:
    from nova.lazy import require
    from nova.model.loading import load_base_model
    from nova.train.stage import run_stage

    datasets, retention = data

    def record() -> None:
        resolved = {**_resolved(ctx, placement, source, fits), "system_prompt": _system(ctx, tokenizer).to_dict()}
        write_run_config(ctx.run, resolved_config(ctx.phase, ctx.model_cfg, ctx.chain, resolved))
        _write_data_reports(ctx, datasets)

    distributed.on_main(ctx.ranks, record)
    frozen = f" + frozen adapters: {', '.join(r.name for r in ctx.chain)}" if ctx.chain else ""
    ctx.log.say(f"[{ctx.phase.name}] loading {source} ({ctx.model_cfg.quantization}, {placement.dtype_name}, "
                f"{placement.device}){frozen}")
    from nova.train.stage import stage_strategy

    shard = any(stage_strategy(ctx, s.config, placement).shards_weights for s in ctx.planned.stages)
    base = load_base_model(ctx.model_cfg, placement, source, shard=shard,
                           weights_dtype=require("torch").float32 if ctx.planned.full else None)
    require("transformers").set_seed(ctx.planned.stages[0].config.training.seed)  # the new adapter's init
    model = _prepare_for_training(base, ctx, placement)
    if not shard:  # sharded weights cannot be scored outside the engine: the table is left out (said below)
        retention.measure_start(model, tokenizer, ctx)
    _attach_kl(ctx, model)
    results = []
    for stage, data in zip(ctx.planned.stages, datasets, strict=True):
        if stage.index > 0 and not ctx.planned.full:  # full: the reference is precomputed from the weights
            _freeze_stage_start(model, ctx.run.stage_adapter(ctx.planned.stages[stage.index - 1].name))
        results.append(run_stage(StageRun(ctx, stage, model, tokenizer, placement, data)))

    if shard:
        ctx.log.say(f"[{ctx.phase.name}] forgetting: not measured (the weights are sharded across ranks)")
    else:
        retention.finish(model, tokenizer, ctx)
    seconds = time.time() - started
    result = PhaseResult(ctx.phase.name, ctx.run_dir, ctx.run.model_dir if ctx.planned.full else ctx.run.adapter,
                         results, seconds)
    distributed.on_main(ctx.ranks, lambda: _finish_phase(ctx, model, tokenizer, result))
    return result


def _finish_phase(ctx: PhaseContext, model: Any, tokenizer: Any, result: PhaseResult) -> None:
    """The phase's adapter (or model), its smoke answers, and COMPLETE (written last)."""
    if ctx.planned.full:
        from nova.train.full import finish_full_phase

        finish_full_phase(ctx)
    else:
        _finish_adapter(ctx)
    _smoke_prompts(ctx, model, tokenizer)
    write_json_atomic(ctx.run.complete_marker, {
        "phase": ctx.phase.name, "finished": time.time(), "seconds": round(result.seconds, 1),
        "stages": [r.__dict__ for r in result.stages], "adapter": str(result.adapter_dir),
        "fingerprints": [f.to_dict() for f in ctx.fingerprints],
    })


def _finish_adapter(ctx: PhaseContext) -> None:
    """adapter/: the last stage's adapter, with model cards."""
    with atomic_dir(ctx.run.adapter, check=False) as tmp:
        shutil.copytree(ctx.run.stage_adapter(ctx.planned.stages[-1].name), tmp, dirs_exist_ok=True)
        _write_cards(ctx, tmp)


def _attach_kl(ctx: PhaseContext, model: Any) -> None:
    """retention.kl_weight: the SFT loss gets its KL term toward the start (nova.train.loss)."""
    weight = ctx.phase.retention.kl_weight
    if weight <= 0:
        return
    from nova.train.loss import StartModel, attach_start_model, install_sft_loss

    causal_lm = model.get_base_model()
    install_sft_loss(causal_lm)
    attach_start_model(causal_lm, StartModel(model, tuple(r.name for r in ctx.chain), weight))


def _write_cards(ctx: PhaseContext, adapter_tmp: Path) -> None:
    """Model cards in place of PEFT's empty template; a chained adapter says what it needs below it."""
    from nova.runs import read_run
    from nova.runs.card import write_card
    from nova.runs.card_usage import mark_requires

    record = read_run(ctx.run.path)
    for stage in ctx.planned.stages:
        write_card(ctx.run.stage_adapter(stage.name), record, kind="stage", stage=stage.name)
    write_card(adapter_tmp, record, kind="adapter")
    mark_requires(adapter_tmp, record)


def _prepare_for_training(base: Any, ctx: PhaseContext, placement: Any) -> Any:
    """Stack the chain's adapters and add the trainable one (on a CPU with nova's faster LoRA dropout,
    nova.model.dropout).

    PEFT's prepare_model_for_kbit_training is deliberately not used: it upcasts embeddings,
    lm_head and norms to fp32 (about +2 GiB on an 8B model) and so makes the residual stream
    fp32, which the preflight memory model (calibrated on bf16 activations) would not expect.
    Frozen base weights plus input gradients for checkpointing are all QLoRA needs.
    """
    if ctx.planned.full:  # adapter: full trains the weights themselves
        from nova.model.trained import prepare_full

        return prepare_full(base)
    base.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    model = add_trainable(base, ctx.phase.lora, ctx.chain)
    if placement.device == "cpu":
        from nova.model.dropout import use_cpu_dropout

        use_cpu_dropout(model)
    return model


def _freeze_stage_start(model: Any, adapter_dir: Path) -> None:
    """Keep a frozen copy of the phase adapter as the next stage starts (the DPO reference)."""
    from nova.model.adapters import activate

    if STAGE_REF in model.peft_config:
        model.delete_adapter(STAGE_REF)
    model.load_adapter(str(adapter_dir), adapter_name=STAGE_REF, is_trainable=False)
    active = [n for n in model.peft_config if n not in (STAGE_REF, TRAINABLE)] + [TRAINABLE]
    activate(model, active, trainable=[TRAINABLE])


def _system(ctx: PhaseContext, tokenizer: Any) -> Any:
    """The phase's system prompt as training renders it (nova.data.system)."""
    from nova.data.system import phase_system

    return phase_system([stage.config.data for stage in ctx.planned.stages], tokenizer)


def _smoke_prompts(ctx: PhaseContext, model: Any, tokenizer: Any) -> None:
    """Answer the config's smoke prompts with the tuned model and save them beside the adapter."""
    if not ctx.phase.smoke_prompts:
        return
    from nova.model.adapters import active_adapters
    from nova.model.generate import generate_answers

    system = _system(ctx, tokenizer)  # asked as trained: the run's system prompt (nova.data.system)
    head = system.messages()
    ctx.log.say(f"[{ctx.phase.name}] smoke prompts; system prompt: {system.describe()}")
    answers = generate_answers(model, tokenizer, ctx.phase.smoke_prompts, max_new_tokens=64, system=head)
    base: list[str | None] = [None] * len(answers)  # full fine-tuning: the base is not in memory any more
    if not ctx.planned.full:
        with active_adapters(model, []):  # the base beside it: what the tuning changed is visible at once
            base = list(generate_answers(model, tokenizer, ctx.phase.smoke_prompts, max_new_tokens=64, system=head))
    lines = []
    for prompt, answer, before in zip(ctx.phase.smoke_prompts, answers, base, strict=True):
        lines.append(json.dumps({"prompt": prompt, "system": system.text, "answer": answer,
                                 "base_answer": before}) + "\n")
        ctx.log.say(f"[{ctx.phase.name}] smoke: {prompt!r}")
        ctx.log.say(f"    tuned: {answer[:200]!r}")
        if before is not None:
            ctx.log.say(f"    base:  {before[:200]!r}")
    write_text_atomic(ctx.run.smoke, "".join(lines))
