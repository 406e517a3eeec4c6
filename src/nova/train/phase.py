"""Run one phase: lock, inputs, data, batch, first writes, model, stages, finish, in that order.

``run_phase`` reads in run order, and the order matters:

1. the run directory is locked (a second nova train on it is refused) and must be nova's own;
2. the inputs: the base model's source and placement, the tokenizer, each stage's fingerprint, and
   the check that earlier work a resume would reuse was trained with the settings asked for now;
3. the data: every stage's data validated and tokenized, and the holdouts, before a model loads;
4. the batch: auto-fit chooses each stage's micro batch from the GPU's free memory now;
5. the first writes (config.yaml, the data reports), only once everything above is valid;
6. the model: the base, the earlier phases' adapters stacked frozen, and what the phase trains;
7. the stages, in order, each saving under ``stages/<stage>/`` (nova.train.stage);
8. the finish: the forgetting table, ``adapter/`` (full: ``model/``), smoke answers, and a
   ``COMPLETE`` marker written last, so a phase counts as finished only when all of it is on disk.

Each step returns a small frozen value the later steps read (nova.train.context); the LoRA/full
differences are asked of ``run.kind`` (nova.model.trained). In a distributed run every rank
validates and trains; rank 0 alone writes.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nova.console import task
from nova.errors import NovaError
from nova.files import write_json_atomic, write_text_atomic
from nova.plan import PlannedStage
from nova.runs.layout import ATTEMPT_STATE
from nova.runs.lock import check_run_dir, locked, mark_run_dir
from nova.runs.record import resolved_config, write_run_config
from nova.train.context import PhaseData, PhaseInputs, PhaseResult, PhaseRun, StageResult, StageRun
from nova.train.machinery import distributed


def run_phase(run: PhaseRun, on_start: Callable[[], None] | None = None) -> PhaseResult:
    """Train all stages of one phase and leave ``adapter/`` (full: ``model/``) plus ``COMPLETE``.

    ``on_start`` is called once the inputs are valid, just before the first write. Earlier work is
    reused only when it was trained with the settings asked for now (nova.train.fingerprint).
    """
    started = time.time()
    with claimed(run):
        inputs = read_inputs(run)
        data = prepare_data(run, inputs)
        stages, fits = distributed.on_main(run.ranks, lambda: auto_fit_stages(  # one choice for every rank
            run, inputs.stages, inputs.source, inputs.placement))
        distributed.on_main(run.ranks, lambda: first_writes(run, inputs, data, fits, on_start))
        model = load_model(run, inputs, data, stages)
        results = train_stages(run, inputs, model, data, stages)
        run.stop.trained = f"every stage is trained and saved under {run.run.path / 'stages'}"
        try:
            return finish(run, inputs, model, data, results, started)
        finally:
            run.stop.trained = None


@contextmanager
def claimed(run: PhaseRun) -> Iterator[None]:
    """The run directory locked for the whole phase (rank 0 holds the lock), and checked to be nova's own."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        def claim() -> None:
            check_run_dir(run.run)  # before the lock writes nova.lock into someone else's directory
            stack.enter_context(locked(run.run_dir, "run directory"))
            check_run_dir(run.run)

        distributed.on_main(run.ranks, claim)
        yield


def model_source(run: PhaseRun) -> tuple[str, Any, Any]:
    """(source, placement, tokenizer): the base model as this phase loads it, before any weights load."""
    from nova.model.loading import choose_placement, load_tokenizer, resolve_base

    source = resolve_base(run.model_cfg)
    gpu = run.ranks.local_rank if run.ranks.distributed else run.planned.stages[0].config.training.gpu
    placement = choose_placement(run.model_cfg.compute_dtype, gpu)
    return source, placement, load_tokenizer(run.model_cfg, source)


def read_inputs(run: PhaseRun) -> PhaseInputs:
    """What the phase is and whether its earlier work may be reused; nothing is loaded or written yet."""
    from nova.train.fingerprint import check_reuse, compute_fingerprints, keep_effective_batch

    source, placement, tokenizer = model_source(run)
    run.kind.check_placement(placement)  # full fine-tuning refuses fp16 before anything loads
    stages = run.planned.stages
    changes: dict[str, dict[str, Any]] = {}
    if run.resume:
        stages, notes = keep_effective_batch(run, stages)  # fewer or more ranks than the checkpoint had
        for note in notes:
            run.log.say(note)
    fingerprints = compute_fingerprints(run, stages, source, placement.dtype_name, tokenizer)
    if run.resume:
        changes = check_reuse(run, stages, fingerprints)
    return PhaseInputs(stages, source, placement, tokenizer, fingerprints, changes)


def prepare_data(run: PhaseRun, inputs: PhaseInputs) -> PhaseData:
    """Validate and tokenize every stage's data before any weights load (and before anything is written),
    with the earlier phases' data mixed in where ``retention.replay`` asks for it; and the holdouts the
    forgetting table scores after the last stage."""
    from nova.data import prepare_stage_data
    from nova.train.retention import Retention, add_replay

    with distributed.main_first(run.ranks):  # rank 0 fills the data cache, the others read it
        prepared = []
        for stage in inputs.stages:
            cfg = stage.config
            if not cfg.data.datasets:
                raise NovaError(f"stage {stage.label} has no data.datasets", hint="add at least one data source")
            check_before_loading(stage)
            prepared.append(prepare_stage_data(cfg.data, inputs.tokenizer, method=cfg.method,
                                               seed=cfg.training.seed, dpo=cfg.length_settings))
        prepared = add_replay(run, inputs.tokenizer, prepared)
        holdouts = Retention.prepare(run, inputs.tokenizer, prepared)
    for stage, data in zip(inputs.stages, prepared, strict=True):
        run.log.say(f"[{stage.label}] data:")
        for line in data.report.lines():
            run.log.say(f"  {line}")
    return PhaseData(tuple(prepared), holdouts)


def check_before_loading(stage: PlannedStage, *, run_code: bool = True) -> None:
    """The method's own check of its inputs before a model loads (GRPO: the user's reward files import);
    ``run_code=False`` (a dry run): the same check without running any of the user's code."""
    hook = stage.config.spec.before_loading
    if hook is not None:
        from nova.lazy import resolve

        resolve(hook)(stage.config, stage.keys, run_code=run_code)


def auto_fit_stages(run: PhaseRun, stages: tuple[PlannedStage, ...], source: str, placement: Any,
                    budget_bytes: int | None = None) -> tuple[tuple[PlannedStage, ...], dict[str, Any]]:
    """Apply ``training.auto_fit``: per stage, the micro batch, accumulation and checkpointing that fit
    the GPU's free memory (measured now, before the model loads), same effective batch.

    Returns the stages to run and, per stage name, what was chosen and why (recorded in config.yaml).
    The stage is sized as preflight sizes it (``fit_stage``: its reference copy, the chain's frozen
    adapters); the changed settings are validated like a user's config.
    """
    if not any(s.config.training.auto_fit for s in stages):
        return stages, {}
    name = run.phase.name
    if placement.device != "cuda" and budget_bytes is None:
        run.log.say(f"[{name}] auto_fit: no GPU, keeping the configured batch settings")
        return stages, {}
    if budget_bytes is None:
        from nova.lazy import require

        budget_bytes = int(require("torch").cuda.mem_get_info(placement.gpu_index)[0])
    from nova.model.loading import gpu_name
    from nova.preflight import fit_stage

    gpu = gpu_name(placement)

    config_file = Path(source) / "config.json"
    model_config = json.loads(config_file.read_text(encoding="utf-8")) if Path(source).is_dir() else None
    if model_config is None:
        run.log.say(f"[{name}] auto_fit: no local config.json for {source}; keeping the batch settings")
        return stages, {}
    fits: dict[str, Any] = {}
    out = []
    for stage in stages:
        cfg = stage.config
        if not cfg.training.auto_fit:
            out.append(stage)
            continue
        choice = fit_stage(model_config, run.planned, stage, budget_bytes, gpu_name=gpu)
        fits[stage.name] = choice.to_dict()
        run.log.say(f"[{stage.label}] auto_fit: {choice.reason}")
        if not choice.fits:
            raise NovaError(f"auto_fit: stage {stage.label} does not fit: {choice.reason}")
        training = cfg.training.changed(micro_batch_size=choice.micro_batch_size,
                                        gradient_accumulation_steps=choice.gradient_accumulation_steps,
                                        gradient_checkpointing=choice.gradient_checkpointing)
        out.append(replace(stage, config=cfg.changed(training=training)))
    return tuple(out), fits


def first_writes(run: PhaseRun, inputs: PhaseInputs, data: PhaseData, fits: dict[str, Any],
                 on_start: Callable[[], None] | None) -> None:
    """The run directory becomes this run's: marked, an earlier attempt forgotten (--fresh, --force),
    COMPLETE removed, config.yaml and the data reports written."""
    if on_start is not None:
        on_start()
    run.log.attach()
    mark_run_dir(run.run)
    run.run.complete_marker.unlink(missing_ok=True)
    if not run.resume:
        _forget_earlier_attempt(run)
    write_run_config(run.run, resolved_config(run.phase, run.model_cfg, list(run.chain),
                                              _resolved(run, inputs, fits)))
    for stage, prepared in zip(inputs.stages, data.datasets, strict=True):
        write_json_atomic(run.run.data_report(stage.name), prepared.report.to_dict())


def _forget_earlier_attempt(run: PhaseRun) -> None:
    """--fresh or --force: remove what an earlier attempt of this phase left (in nova's own directory,
    under its lock); a delete that fails is an error, never ignored."""
    for name in ATTEMPT_STATE:
        target = run.run_dir / name
        try:
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        except OSError as exc:
            raise NovaError(f"cannot delete {target} of an earlier attempt: {exc.strerror or exc}",
                            hint="remove it by hand, then run again") from None


def _resolved(run: PhaseRun, inputs: PhaseInputs, fits: dict[str, Any]) -> dict[str, Any]:
    """The ``_resolved`` part of config.yaml, keeping the record of earlier resumes with changes."""
    earlier: list[Any] = []
    if run.resume and run.run.config.is_file():
        from nova.runs.record import read_run

        try:
            earlier = list(read_run(run.run_dir).resolved.get("resumed_with_changes") or [])
        except NovaError:
            earlier = []
    applied = [{"stage": name, **change} for name, change in inputs.changes.items()]
    for change in applied:
        run.log.say(f"[{run.phase.name}/{change['stage']}] resuming with changes: " + ", ".join(
            f"{k} {v[0]} -> {v[1]}" for k, v in change.items() if isinstance(v, list)))
    return {"device": inputs.placement.device, "compute_dtype": inputs.placement.dtype_name, "base": inputs.source,
            "auto_fit": fits or None, "resumed_with_changes": (earlier + applied) or None,
            "system_prompt": _system(run, inputs.tokenizer).to_dict()}


@dataclass(frozen=True)
class PhaseModel:
    """The model as the phase starts, and whether its weights are sharded across ranks (FSDP, ZeRO-3)."""

    model: Any
    sharded: bool


def load_model(run: PhaseRun, inputs: PhaseInputs, data: PhaseData, stages: tuple[PlannedStage, ...]) -> PhaseModel:
    """The base (quantized as configured), the chain's adapters stacked frozen, what the phase trains; the
    retention sets scored on this start, and the KL term toward it attached (retention.kl_weight)."""
    from nova.lazy import require
    from nova.model.loading import load_base_model
    from nova.train.stage import stage_strategy

    frozen = f" + frozen adapters: {', '.join(r.name for r in run.chain)}" if run.chain else ""
    placement = inputs.placement
    shard = any(stage_strategy(run, s.config, placement).shards_weights for s in stages)
    with task("loading the model", line=f"[{run.phase.name}] loading {inputs.source} ({run.model_cfg.quantization}, "
              f"{placement.dtype_name}, {placement.device}){frozen}"):
        base = load_base_model(run.model_cfg, placement, inputs.source, shard=shard,
                               weights_dtype=run.kind.weights_dtype())
    require("transformers").set_seed(stages[0].config.training.seed)  # the new adapter's init
    model = run.kind.prepare(base, run.phase.lora, run.chain, placement)
    if not shard:  # sharded weights cannot be scored outside the engine: the table is left out (said below)
        data.holdouts.measure_start(model, inputs.tokenizer, run)
    _attach_kl(run, model)
    return PhaseModel(model, shard)


def _attach_kl(run: PhaseRun, model: Any) -> None:
    """retention.kl_weight: the SFT loss gets its KL term toward the start (nova.train.methods.loss)."""
    weight = run.phase.retention.kl_weight
    if weight <= 0:
        return
    from nova.train.methods.loss import StartModel, attach_start_model, install_sft_loss

    causal_lm = model.get_base_model()
    install_sft_loss(causal_lm)
    attach_start_model(causal_lm, StartModel(model, tuple(r.name for r in run.chain), weight))


def train_stages(run: PhaseRun, inputs: PhaseInputs, model: PhaseModel, data: PhaseData,
                 stages: tuple[PlannedStage, ...]) -> list[StageResult]:
    """Each stage in order, from where the one before left the phase's adapter (or weights)."""
    from nova.train import stage as stage_module  # looked up here: tests replace run_stage

    chain = [r.name for r in run.chain]
    results = []
    for stage, prepared in zip(stages, data.datasets, strict=True):
        cfg = stage.config
        keeps = cfg.spec.keeps_reference(cfg.method_settings) and stage.index > 0
        previous = run.kind.stage_output(run.run, stages[stage.index - 1].name) if stage.index > 0 else None
        run.kind.start_stage(model.model, previous, keeps)  # LoRA: its reference, the adapter as it stands
        reference = run.kind.reference(chain, later_stage=keeps)
        results.append(stage_module.run_stage(StageRun(run, stage, model.model, inputs.tokenizer, inputs.placement,
                                                       prepared, inputs.fingerprints[stage.index], reference)))
    return results


def finish(run: PhaseRun, inputs: PhaseInputs, model: PhaseModel, data: PhaseData, results: list[StageResult],
           started: float) -> PhaseResult:
    """The forgetting table, then on rank 0 the phase's adapter (or model), smoke answers and COMPLETE.
    The phase's time runs from ``started`` to COMPLETE: the finish (smoke prompts included) counts."""
    if model.sharded:
        run.log.say(f"[{run.phase.name}] forgetting: not measured (the weights are sharded across ranks)")
    else:
        data.holdouts.finish(model.model, inputs.tokenizer, run)
    result = PhaseResult(run.phase.name, run.run_dir, run.kind.output(run.run), results, time.time() - started)
    if model.sharded and run.phase.smoke_prompts:  # rank 0 alone cannot run a sharded model's forward
        run.log.say(f"[{run.phase.name}] smoke prompts: not answered (the weights are sharded across ranks); "
                    f"nova infer --run {run.run_dir} answers them")
    answering = None if model.sharded else model.model
    distributed.on_main(run.ranks, lambda: _write_outputs(run, inputs, answering, result, started))
    return replace(result, seconds=time.time() - started)


def _write_outputs(run: PhaseRun, inputs: PhaseInputs, model: Any, result: PhaseResult, started: float) -> None:
    """The phase's adapter (or model), its smoke answers, and COMPLETE (written last)."""
    run.kind.finish(run.run, run.planned.stages[-1].name, lambda tmp: _write_cards(run, tmp),
                    lambda line: run.log.say(f"[{run.phase.name}] {line}"))
    run.stop.trained = f"the {run.kind.noun} is saved in {run.kind.output(run.run)}"
    if model is not None:  # None: sharded across ranks (said in finish)
        _smoke_prompts(run, model, inputs.tokenizer)
    write_json_atomic(run.run.complete_marker, {
        "phase": run.phase.name, "finished": time.time(), "seconds": round(time.time() - started, 1),
        "stages": [r.__dict__ for r in result.stages], "adapter": str(result.adapter_dir),
        "fingerprints": [f.to_dict() for f in inputs.fingerprints],
    })


def _write_cards(run: PhaseRun, adapter_tmp: Path) -> None:
    """Model cards in place of PEFT's empty template; a chained adapter says what it needs below it."""
    from nova.runs import read_run
    from nova.runs.card import write_card
    from nova.runs.card_usage import mark_requires

    record = read_run(run.run.path)
    for stage in run.planned.stages:
        write_card(run.run.stage_adapter(stage.name), record, kind="stage", stage=stage.name)
    write_card(adapter_tmp, record, kind="adapter")
    mark_requires(adapter_tmp, record)


def _answer_each(model: Any, tokenizer: Any, prompts: list[str], doing: Any, system: Any) -> list[str]:
    """The smoke answers one prompt at a time, each counted (nova status: "smoke prompts 2/6")."""
    from nova.model.generate import generate_answers

    out = []
    for prompt in prompts:
        out += generate_answers(model, tokenizer, [prompt], max_new_tokens=64, system=system)
        doing.advance()
    return out


def _system(run: PhaseRun, tokenizer: Any) -> Any:
    """The phase's system prompt as training renders it (nova.data.system)."""
    from nova.data.system import phase_system

    return phase_system([stage.config.data for stage in run.planned.stages], tokenizer)


def _smoke_prompts(run: PhaseRun, model: Any, tokenizer: Any) -> None:
    """Answer the config's smoke prompts with the tuned model and save them beside the adapter."""
    prompts = run.phase.smoke_prompts
    if not prompts:
        return
    from nova.model.adapters import active_adapters

    system = _system(run, tokenizer)  # asked as trained: the run's system prompt (nova.data.system)
    head = system.messages()
    base_adapters = run.kind.base_adapters()  # None: the base is not in memory any more (full fine-tuning)
    models = "the tuned model" if base_adapters is None else "the tuned model, then the base"
    with task("smoke prompts", len(prompts) * (1 if base_adapters is None else 2),
              line=f"[{run.phase.name}] smoke prompts: answering {len(prompts)} with {models}; system prompt: "
              f"{system.describe()}") as doing:
        answers = _answer_each(model, tokenizer, prompts, doing, head)
        base: list[str | None] = [None] * len(answers)
        if base_adapters is not None:
            with active_adapters(model, base_adapters):  # the base beside it: what the tuning changed is visible
                base = list(_answer_each(model, tokenizer, prompts, doing, head))
    lines = []
    for prompt, answer, before in zip(prompts, answers, base, strict=True):
        lines.append(json.dumps({"prompt": prompt, "system": system.text, "answer": answer,
                                 "base_answer": before}) + "\n")
        run.log.say(f"[{run.phase.name}] smoke: {prompt!r}")
        run.log.say(f"    tuned: {answer[:200]!r}")
        if before is not None:
            run.log.say(f"    base:  {before[:200]!r}")
    write_text_atomic(run.run.smoke, "".join(lines))


def finished_fingerprints(run: PhaseRun) -> tuple[Any, ...]:
    """The fingerprints a finished phase must match to be skipped (the config as it asks now)."""
    from nova.train.fingerprint import compute_fingerprints

    source, placement, tokenizer = model_source(run)
    return compute_fingerprints(run, run.planned.stages, source, placement.dtype_name, tokenizer, keep_legacy=True)
