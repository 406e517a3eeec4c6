"""``nova train --probe``: a few real optimizer steps on the worst micro batch of each stage, measured.

The probe runs the phase as ``nova.train.phase.run_phase`` does (the same inputs, data preparation,
auto-fit, model loading and method trainers) with three differences: nothing is written in the run
directory (the trainer writes under a temporary directory that is removed, and the run directory is
neither locked nor marked; a live run's directory is refused), each stage's data is cut to the rows
of its worst micro batch (the longest rows the batching will produce: sequences, pairs, prompts),
and each stage runs ``steps`` optimizer steps of one micro batch. It reports, per stage, the measured
peak (nova.train.probe_memory) beside preflight's estimate for the same micro batch, tokens per
second and the ETA of the stage's full run; the measurement is stored per machine and model
(nova.preflight.probe_calibration) for later preflights. Out of memory during a probe is a verdict
(the stage does not fit), never a crash.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nova.config.load import LoadedConfig
from nova.console import RunLog, human_seconds, speaking
from nova.errors import NovaError
from nova.files import GiB
from nova.plan import Plan, PlannedPhase, PlannedStage, make_plan

PROFILED_STEPS = 2  # step 1 makes the optimizer states, step 2 runs with them: the peak is in these two


@dataclass
class StageProbe:
    """One stage's probe: the estimate and the measured peak of the same micro batch, speed, ETA, verdict."""

    label: str
    estimated_peak_bytes: int | None = None
    measured_peak_bytes: int | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    fits: bool = True
    verdict: str = ""
    fix: str = ""
    band: float = 0.10
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def error(self) -> float | None:
        """(estimate - measured) / measured: negative when the estimate is low."""
        if not self.estimated_peak_bytes or not self.measured_peak_bytes:
            return None
        return (self.estimated_peak_bytes - self.measured_peak_bytes) / self.measured_peak_bytes

    def to_dict(self) -> dict[str, Any]:
        error = self.error
        return {"label": self.label, "estimated_peak_bytes": self.estimated_peak_bytes,
                "measured_peak_bytes": self.measured_peak_bytes,
                "tokens_per_second": None if self.tokens_per_second is None else round(self.tokens_per_second, 2),
                "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
                "fits": self.fits, "error": None if error is None else round(error, 4), "band": self.band,
                "verdict": self.verdict, "fix": self.fix, **self.detail}


@dataclass
class ProbeReport:
    stages: list[StageProbe] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return all(s.fits for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        return {"fits": self.fits, "stages": [s.to_dict() for s in self.stages]}

    def lines(self) -> list[str]:
        out = []
        for s in self.stages:
            est = "-" if s.estimated_peak_bytes is None else f"{s.estimated_peak_bytes / GiB:.2f} GiB"
            got = "-" if s.measured_peak_bytes is None else f"{s.measured_peak_bytes / GiB:.2f} GiB"
            speed = "-" if s.tokens_per_second is None else f"{s.tokens_per_second:.0f} tokens/s"
            eta = "-" if s.eta_seconds is None else human_seconds(s.eta_seconds)
            out.append(f"probe [{s.label}]: estimated {est}, measured {got}, {speed}, full run about {eta}")
            out.append(f"  {s.verdict}")
            if s.fix:
                out.append(f"  fix: {s.fix}")
        return out


def run_probe(loaded: LoadedConfig, *, phase: str | None = None, steps: int = 4, out: Path | None = None,
              log: RunLog | None = None, plan: Plan | None = None, record: bool = True) -> ProbeReport:
    """Probe every stage of the selected phases; ``out``: also write the report there (probe.json).

    Raises NovaError for a live run directory, a bad config or a phase whose earlier phases have not
    trained; returns the report otherwise (out of memory included, as a stage that does not fit).
    """
    if steps <= PROFILED_STEPS:
        raise NovaError(f"--probe-steps {steps} is too few", hint=f"use at least {PROFILED_STEPS + 1}: "
                        f"{PROFILED_STEPS} measured steps and one timed step")
    plan = (plan or make_plan(loaded)).select(phase)
    refuse_live(plan)
    log = log or RunLog(None)
    report = ProbeReport()
    with speaking(log):
        for item in plan.phases:
            report.stages += probe_phase(item, log, steps, record) if chain_ready(item) else not_probed(item)
    if out is not None:
        from nova.files import write_json_atomic

        write_json_atomic(out, report.to_dict())
    return report


def refuse_live(plan: Plan) -> None:
    """A probe never runs beside a live run of the same directory (it would compete for its memory)."""
    from nova.runs.lock import current_holder

    for item in plan.phases:
        holder = current_holder(item.run_dir) if item.run_dir.is_dir() else None
        if holder is not None:
            raise NovaError(f"run directory {item.run_dir} is in use by {holder}: a probe does not run beside it",
                            hint="wait for that run to end (nova status), or probe another output_dir")


def chain_ready(item: PlannedPhase) -> bool:
    """Whether the earlier phases this one stacks on have finished (their adapters are what it loads)."""
    try:
        item.chain_refs()
    except NovaError:
        return False
    return True


def not_probed(item: PlannedPhase) -> list[StageProbe]:
    """A phase whose earlier phases have not trained yet: said per stage, with how to probe it later."""
    why = "its earlier phases have not finished"
    try:
        item.chain_refs()
    except NovaError as exc:
        why = exc.message
    return [StageProbe(stage.label, verdict=f"not probed: {why}", fix=f"probe it once that phase has trained "
                       f"(nova train --config ... --phase {item.name} --probe)", detail={"probed": False})
            for stage in item.stages]


def probe_phase(item: PlannedPhase, log: RunLog, steps: int, record: bool) -> list[StageProbe]:
    """Load the phase as training does and probe each of its stages in order."""
    from nova.train.context import PhaseRun
    from nova.train.machinery.resilience import free_memory
    from nova.train.phase import auto_fit_stages, load_model, prepare_data, read_inputs

    run = PhaseRun(item, tuple(item.chain_refs()), log, resume=False)
    inputs = read_inputs(run)
    data = prepare_data(run, inputs)
    stages, _ = auto_fit_stages(run, inputs.stages, inputs.source, inputs.placement)
    model = load_model(run, inputs, data, stages)
    results = []
    try:
        for stage, prepared in zip(stages, data.datasets, strict=True):
            results.append(probe_stage(run, inputs, model.model, prepared, stage, steps, record))
    finally:
        del model
        free_memory()
    return results


def probe_config(cfg: Any, steps: int) -> Any:
    """The stage as the probe runs it: ``steps`` optimizer steps of one micro batch each, nothing saved."""
    t = cfg.training.changed(max_steps=steps, gradient_accumulation_steps=1, warmup_steps=0, logging_steps=1,
                             save_steps=steps + 1, eval_steps=steps + 1, report_to=[])
    return cfg.changed(training=t)


def row_tokens(dataset: Any) -> list[int]:
    """Tokens per row as the batching sees it: a sequence, or a prompt with its longer reply (pairs)."""
    from nova.data.tokens import row_lengths

    columns = dataset.column_names
    if "input_ids" in columns:
        return row_lengths(dataset)
    prompts = row_lengths(dataset, "prompt_ids") if "prompt_ids" in columns else [0] * len(dataset)
    replies = [0] * len(dataset)
    for name in ("chosen_ids", "rejected_ids", "completion_ids"):
        if name in columns:
            replies = [max(a, b) for a, b in zip(replies, row_lengths(dataset, name), strict=True)]
    return [p + r for p, r in zip(prompts, replies, strict=True)]


def worst_rows(dataset: Any, micro: int, steps: int) -> tuple[Any, int, int | None]:
    """The ``micro`` longest rows, repeated for ``steps`` micro batches; the longest row's tokens; and the
    tokens those rows train (what reaches the LM head; None when the data does not count them)."""
    lengths = row_tokens(dataset)
    if not lengths:
        raise NovaError("the stage has no training rows to probe", hint="check its data (nova data check)")
    longest = sorted(range(len(lengths)), key=lambda i: -lengths[i])[:micro]
    return dataset.select(longest * steps), lengths[longest[0]], trained_tokens(dataset.select(longest))


def trained_tokens(rows: Any) -> int | None:
    """Positions of ``rows`` that reach the LM head: those whose next token is trained (sequences), or the
    replies (pairs, feedback). None for prompts (GRPO trains its generations, made during the steps)."""
    columns = rows.column_names
    if "labels" in columns:
        return sum(sum(1 for label in labels[1:] if label != -100) for labels in rows["labels"])
    replies = [c for c in ("chosen_ids", "rejected_ids", "completion_ids") if c in columns]
    return sum(len(ids) for c in replies for ids in rows[c]) if replies else None


def probe_stage(run: Any, inputs: Any, model: Any, prepared: Any, stage: PlannedStage, steps: int,
                record: bool) -> StageProbe:
    """Train ``steps`` steps of the stage's worst micro batch under the meter, and compare with the estimate."""
    from nova.train.machinery.resilience import free_memory, is_oom

    cfg = probe_config(stage.config, steps)
    micro = cfg.training.micro_batch_size
    train, longest, trained = worst_rows(prepared.train, micro, steps)
    data = replace(prepared, train=train, eval=None)
    result = StageProbe(stage.label)
    estimate = stage_estimate(run, inputs, replace(stage, config=cfg), longest, trained)
    times: list[float] = []
    from nova.train.probe_memory import PeakMeter

    placement = inputs.placement
    meter = PeakMeter(placement.device, placement.gpu_index if placement.device == "cuda" else None)
    with tempfile.TemporaryDirectory(prefix="nova-probe-") as tmp:
        trainer = build_trainer(run, inputs, model, data, replace(stage, config=cfg), Path(tmp), meter, times)
        try:
            with meter:
                trainer.train()
        except Exception as exc:
            if not is_oom(exc):
                raise
            del trainer
            free_memory()
            return out_of_memory(result, estimate, cfg, exc)
    result.measured_peak_bytes = meter.result.peak_bytes
    result.tokens_per_second = tokens_per_second(times, micro * longest, placement.device)
    result.eta_seconds = eta(prepared.train, cfg, stage.config, result.tokens_per_second)
    result.detail = {"micro_batch_size": micro, "longest_row_tokens": longest, "trained_tokens": trained,
                     "steps": steps,
                     "device": placement.device, "measured_how": meter.result.how,
                     "measured_detail": meter.result.detail}
    compare(result, estimate, cfg, placement.device)
    if record and estimate is not None and result.measured_peak_bytes:
        from nova.model.loading import gpu_name
        from nova.preflight.probe_calibration import store

        store(estimate.settings, estimate_shape(inputs), estimate.total_bytes, result.measured_peak_bytes,
              placement.device, gpu_name(placement))
    return result


def build_trainer(run: Any, inputs: Any, model: Any, data: Any, stage: PlannedStage, tmp: Path, meter: Any,
                  times: list[float]) -> Any:
    """The method's own trainer, as ``nova.train.stage`` builds it, writing under ``tmp`` only."""
    from nova.lazy import resolve
    from nova.model.adapters import keep_trainable_fp32
    from nova.train.machinery.resilience import StopRequest
    from nova.train.methods.common import TrainerHooks, TrainerInputs
    from nova.train.probe_memory import step_callback
    from nova.train.stage import stage_strategy

    cfg = stage.config
    keeps = cfg.spec.keeps_reference(cfg.method_settings) and stage.index > 0
    if keeps:  # a later stage's reference: a frozen copy of the adapter as it stands (as a run keeps)
        from nova.model.trained import save_trained

        save_trained(model, tmp / "start", base=run.model_cfg.base, tokenizer=inputs.tokenizer)
    run.kind.start_stage(model, tmp / "start" if keeps else None, keeps)
    reference = run.kind.reference([r.name for r in run.chain], later_stage=keeps)
    hooks = TrainerHooks(tmp / "checkpoints", inputs.placement, tmp / "metrics.jsonl", stage.name, stage.label,
                         StopRequest(), [step_callback(meter, PROFILED_STEPS, times)],
                         stage_strategy(run, cfg, inputs.placement))
    say = lambda line: run.log.say(f"[{stage.label}] probe: {line}")  # noqa: E731
    trainer_inputs = TrainerInputs(model, inputs.tokenizer, cfg, data, hooks, reference, say, {})
    with keep_trainable_fp32(model):
        return resolve(cfg.spec.trainer)(trainer_inputs)


def estimate_shape(inputs: Any) -> Any:
    """The model's shape from its config.json (None for a hub id without a local copy)."""
    from nova.preflight.estimate import model_shape

    config = Path(inputs.source) / "config.json"
    return model_shape(json.loads(config.read_text(encoding="utf-8"))) if config.is_file() else None


def stage_estimate(run: Any, inputs: Any, stage: PlannedStage, longest: int, trained: int | None = None) -> Any:
    """Preflight's estimate for the micro batch the probe runs: its longest row (not data.max_length) and the
    tokens its rows train (preflight assumes every token is trained, the worst case of text data)."""
    from nova.preflight.checks_memory import planned_settings
    from nova.preflight.estimate import CALIBRATED, estimate_for_shape

    shape = estimate_shape(inputs)
    if shape is None:
        return None
    settings = planned_settings(shape, run.planned, stage, on_gpu=inputs.placement.device == "cuda")
    seq = min(settings.seq_len, longest)
    loss_tokens = None if settings.loss_tokens is None else min(settings.loss_tokens, settings.sequences * seq)
    if trained is not None:
        loss_tokens = min(trained, settings.sequences * seq)
    tokens = None if settings.tokens_override is None else min(settings.tokens_override,
                                                              settings.micro_batch_size * seq)
    settings = replace(settings, seq_len=seq, loss_tokens=loss_tokens, tokens_override=tokens,
                       attention_row=None if settings.attention_row is None else seq)
    return estimate_for_shape(shape, settings, CALIBRATED)


def tokens_per_second(times: list[float], tokens_per_step: int, device: str) -> float | None:
    """Tokens per second of the steps after the profiled ones (CUDA: after the first, which warms up)."""
    spans = [end - begin for begin, end in zip(times[0::2], times[1::2], strict=False)]
    timed = spans[PROFILED_STEPS:] if device != "cuda" else spans[1:]
    return tokens_per_step * len(timed) / sum(timed) if timed and sum(timed) > 0 else None


def eta(train: Any, probed: Any, cfg: Any, speed: float | None) -> float | None:
    """Seconds of the stage's full run at the probe's speed: its tokens (every epoch, or max_steps) / speed."""
    if not speed:
        return None
    lengths = row_tokens(train)
    t = cfg.training
    if t.max_steps:
        total = t.max_steps * t.effective_batch_size * (sum(lengths) / max(len(lengths), 1))
    else:
        total = sum(lengths) * t.num_epochs
    return total / speed


def compare(result: StageProbe, estimate: Any, cfg: Any, device: str) -> None:
    """The verdict: fits, and whether the estimate was within its band; a fix from the measured figure."""
    measured = result.measured_peak_bytes
    if estimate is None or measured is None:
        result.verdict = "fits (no estimate: the model has no local config.json)"
        return
    result.estimated_peak_bytes = estimate.total_bytes
    result.band = max(0.10, estimate.uncertainty)
    error = result.error or 0.0
    budget = memory_budget(device)
    result.fits = budget is None or measured <= budget
    where = "fits" if result.fits else f"does not fit ({measured / GiB:.2f} GiB measured, {budget / GiB:.2f} GiB free)"
    if abs(error) <= result.band:
        result.verdict = f"{where}; the estimate is within {abs(error):.0%} of the measured peak"
    else:
        side = "below" if error < 0 else "above"
        result.verdict = (f"{where}; the estimate is {abs(error):.0%} {side} the measured peak (its band is "
                          f"{result.band:.0%}): preflight uses this measurement for this model on this machine now")
    if not result.fits and budget is not None:
        result.fix = smaller_batch_fix(estimate, measured, budget, cfg)


def memory_budget(device: str) -> int | None:
    """Free memory of the device the probe ran on (the GPU's, or the RAM available to the process)."""
    from nova.lazy import require

    torch = require("torch")
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return int(free + torch.cuda.memory_reserved())
    from nova.system import memory

    return memory()[1]


def smaller_batch_fix(estimate: Any, measured: int, budget: int, cfg: Any) -> str:
    """The micro batch the measured figure says fits: what is not activations stays, activations scale."""
    b = estimate.breakdown
    fixed = sum(b[k] for k in ("base_weights", "lora_weights", "lora_gradients", "optimizer_states", "gradients",
                               "dpo_reference", "cuda_context"))
    micro = cfg.training.micro_batch_size
    per_row = max(measured - fixed, 1) / micro
    fits = int((budget - fixed) // per_row)
    if fits >= 1:
        return (f"set training.micro_batch_size {micro} -> {fits} (raise gradient_accumulation_steps to keep the "
                f"effective batch), or turn on gradient checkpointing")
    return f"shorten data.max_length (the longest row is {estimate.settings.seq_len} tokens) or use a larger device"


def out_of_memory(result: StageProbe, estimate: Any, cfg: Any, exc: BaseException) -> StageProbe:
    """Out of memory during the probe: the stage does not fit at this micro batch (a verdict, not a crash)."""
    micro = cfg.training.micro_batch_size
    result.fits = False
    result.estimated_peak_bytes = None if estimate is None else estimate.total_bytes
    result.verdict = f"does not fit: out of memory during the probe at micro batch {micro} ({str(exc)[:120]})"
    result.fix = (f"set training.micro_batch_size {micro} -> {max(micro // 2, 1)} with twice the "
                  "gradient_accumulation_steps, turn on gradient checkpointing, or shorten data.max_length")
    return result
