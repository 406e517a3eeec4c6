"""``nova init``: a first config for a model and a data file, every choice made from the data and the memory
estimate, and said with its reason.

What it decides, in order:

1. the model's shape: a local directory, the local hub cache, or nova's table of known architectures
   (``resources/architectures.json``; no network);
2. the method (``dpo`` for preference pairs, ``kto`` for labelled replies, else ``sft``) and the data's token
   lengths (the model's tokenizer when it is at hand, else about 4 characters a token), so ``max_length``
   holds all (or 99%) of the records and never more than the model's context;
3. the holdout: about 10% of the records, at least ``HOLDOUT_MIN`` and at most ``HOLDOUT_MAX`` (none below
   ``HOLDOUT_FROM`` records: each one is then worth more for training);
4. the batch: an effective batch of 16 sequences (8 for preference pairs), the largest micro batch that
   fits the GPU memory (given, or the real GPU's free memory) by preflight's estimate, then gradient
   checkpointing only if needed (``nova.preflight.fit_stage``);
5. the schedule: 3 epochs of a small set, 2 of a medium one, 1 of a large one; evaluation and checkpoints
   about ten times a run; the learning rate preflight calls typical for the method.

The config is written with a comment on every choice, loaded back through the same validation as any
config, and checked by preflight before ``nova init`` says it is done.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nova.errors import NovaError
from nova.methods import method_spec

HOLDOUT_MIN = 5  # fewer held-out records than this make an eval loss that is noise (preflight warns)
HOLDOUT_MAX = 200  # more costs evaluation time and adds little precision
HOLDOUT_FROM = 40  # below this many records each one is worth more for training than for an eval loss
LENGTHS = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
CHARS_PER_TOKEN = 4.0  # without the tokenizer: English-like text averages about 4 characters a token


@dataclass
class InitChoice:
    """The config ``nova init`` writes, and why each value was chosen."""

    name: str
    model: str
    data: str
    method: str
    max_length: int
    eval_split: float
    micro_batch_size: int
    gradient_accumulation_steps: int
    gradient_checkpointing: bool
    num_epochs: int
    steps: int
    eval_steps: int
    learning_rate: float
    why: list[str] = field(default_factory=list)

    @property
    def effective(self) -> int:
        return self.micro_batch_size * self.gradient_accumulation_steps


def _model_config(model: str) -> tuple[dict[str, Any], str, Path | None]:
    """The model's config.json facts, where they came from, and its local directory (None: not here)."""
    from nova.preflight.model_source import resolve_model

    source = resolve_model(model, allow_network=False)
    if source.config is None:
        raise NovaError(f"no config.json for {model}: {source.message}",
                        hint="give a local model directory, a hub id in the local cache, or a model nova knows "
                        "(see src/nova/resources/architectures.json)")
    return source.config, source.message, source.path


def _lengths(data: Path, local: Path | None, method: str) -> tuple[list[int], str, Any]:
    """Each training record's length in tokens (tokenizer) or estimated from its characters, and the report."""
    from nova.config.data_schema import DataConfig, DatasetSpec
    from nova.config.schema import ModelConfig
    from nova.data import check_data
    from nova.model.loading import tokenizer_for_check

    tokenizer, why_not = (tokenizer_for_check(ModelConfig(base=str(local))) if local is not None
                          else (None, "the model is not on this machine"))
    cfg = DataConfig(datasets=[DatasetSpec(path=str(data))], max_length=LENGTHS[-1], eval_split=0)
    report = check_data(cfg, method=method, tokenizer=tokenizer)  # type: ignore[arg-type]
    if tokenizer is not None and report.tokens is not None and report.tokens.sequences:
        t = report.tokens
        return [t.median, t.p95, t.max], "tokens counted with the model's tokenizer", report
    sizes = sorted(len(line) / CHARS_PER_TOKEN for line in data.read_text(encoding="utf-8").splitlines()
                   if line.strip())
    if not sizes:
        raise NovaError(f"{data} holds no records")
    pick = [sizes[len(sizes) // 2], sizes[min(len(sizes) - 1, int(len(sizes) * 0.95))], sizes[-1]]
    return [math.ceil(x) for x in pick], f"estimated at {CHARS_PER_TOKEN:g} characters a token ({why_not})", report


def _method(data: Path, method: str | None) -> tuple[str, str]:
    """The method the records call for, from the first readable record's fields (as ``nova data check`` does)."""
    if method is not None:
        return method, "as asked"
    from nova.data.records import detect_format
    from nova.data.sources import FileProblem, list_files, read_file

    kind = None
    try:
        for path in list_files(data):
            kind = next((detect_format(r.data) for r in read_file(path)[1] if r.data is not None), None)
            break
    except FileProblem as exc:
        raise NovaError(f"cannot read {data}: {exc}") from None
    from nova.data.formats import records_of
    from nova.methods import METHOD_NAMES, reading

    chosen = reading(records_of(kind))[0] if kind is not None else METHOD_NAMES[0]
    others = ", ".join(m for m in METHOD_NAMES if m != chosen)
    return chosen, (f"the records are {kind or 'text'}, the first method that reads them "
                    f"(pass --method {others} for another)")


def _max_length(lengths: list[int], context: int | None) -> tuple[int, str]:
    median, p95, longest = lengths
    want = longest if longest <= 1.5 * max(p95, 1) else p95  # a few outliers do not set the length
    pick = next((n for n in LENGTHS if n >= want), LENGTHS[-1])
    if context:
        pick = min(pick, int(context))
    kept = "every record fits" if pick >= longest else "longer records are truncated"
    return pick, f"median {median}, p95 {p95}, longest {longest} tokens: {kept}"


def _holdout(records: int) -> tuple[float, str]:
    if records < HOLDOUT_FROM:
        return 0.0, f"{records} records are too few to spare a holdout: every record trains (no eval loss)"
    held = min(max(round(records * 0.1), HOLDOUT_MIN), HOLDOUT_MAX)
    return round(held / records, 4), f"{held} of {records} records held out for the eval loss"


def _schedule(records: int, effective: int) -> tuple[int, int, int, str]:
    epochs = 3 if records <= 1_000 else 2 if records <= 10_000 else 1
    steps = max(1, math.ceil(records / effective)) * epochs
    every = max(min(steps, 5), steps // 10)
    return epochs, steps, every, (f"{epochs} epoch(s) of {records} records at {effective} a step = {steps} steps; "
                                  f"evaluate and save every {every}")


def _fit(model_cfg: dict[str, Any], model: str, method: str, max_length: int, effective: int,
         budget: int | None) -> tuple[int, int, bool, str]:
    from nova.config.load import LoadedConfig
    from nova.config.schema import PhaseConfig
    from nova.plan import make_plan
    from nova.preflight import fit_stage

    if budget is None:
        return 4, max(1, effective // 4), True, ("no GPU to fit for (pass --gpu-memory 24GiB): micro batch 4, "
                                                 "gradient checkpointing on")
    phase = PhaseConfig.model_validate({
        "name": "init", "model": {"base": model}, "method": method,
        "data": {"datasets": [], "max_length": max_length},
        "training": {"micro_batch_size": effective, "gradient_accumulation_steps": 1,
                     "gradient_checkpointing": False}})
    planned = make_plan(LoadedConfig(Path("init.yaml"), phase, {})).phases[0]  # sized as training sizes it
    choice = fit_stage(model_cfg, planned, planned.stages[0], budget)
    if not choice.fits:
        raise NovaError(f"{model} at max_length {max_length} does not fit: {choice.reason}")
    return choice.micro_batch_size, choice.gradient_accumulation_steps, choice.gradient_checkpointing, choice.reason


def _budget(gpu_memory: str | None) -> tuple[int | None, str]:
    from nova.preflight.gpus import NvmlProbe, parse_size

    if gpu_memory is not None:
        return parse_size(gpu_memory), f"a GPU of {gpu_memory} (--gpu-memory)"
    try:
        gpus = NvmlProbe().snapshot().gpus
    except Exception:  # no driver, no NVML: the CPU
        gpus = []
    if not gpus:
        return None, "no GPU found"
    return int(gpus[0].free_bytes), f"GPU 0's free memory ({gpus[0].free_bytes / 2**30:.1f} GiB)"


def choose(model: str, data: Path, *, method: str | None = None, gpu_memory: str | None = None,
           name: str | None = None) -> InitChoice:
    """Every value of the config, from the data and the memory estimate, with its reason."""
    if not data.is_file():
        raise NovaError(f"--data {data} is not a file", hint="give a JSONL, JSON, CSV or Parquet data file")
    model_cfg, where, local = _model_config(model)
    method, method_why = _method(data, method)
    lengths, how, report = _lengths(data, local, method)
    max_length, length_why = _max_length(lengths, model_cfg.get("max_position_embeddings"))
    records = report.train_records + report.eval_records
    eval_split, holdout_why = _holdout(records)
    effective = method_spec(method).typical_effective_batch
    budget, budget_why = _budget(gpu_memory)
    micro, accum, checkpointing, fit_why = _fit(model_cfg, model, method, max_length, effective, budget)
    train_records = records - round(records * eval_split)
    epochs, steps, every, schedule_why = _schedule(train_records, micro * accum)
    lr = method_spec(method).lora_lr.suggested
    why = [f"model: {where}", f"method {method}: {method_why}", f"max_length {max_length}: {length_why} ({how})",
           f"eval_split {eval_split:g}: {holdout_why}",
           f"batch {micro} x {accum} = {micro * accum}, gradient checkpointing "
           f"{'on' if checkpointing else 'off'}: {budget_why}; {fit_why}",
           f"num_epochs {epochs}: {schedule_why}", f"learning_rate {lr:g}: typical for LoRA {method}"]
    stem = "".join(c if c.isalnum() or c in "_-" else "-" for c in data.stem).strip("-_") or "run"
    return InitChoice(name or stem, model, str(data), method, max_length, eval_split, micro, accum, checkpointing,
                      epochs, steps, every, lr, why)


def render(c: InitChoice) -> str:
    """The config as YAML, each choice with its reason beside it."""
    q = json.dumps  # a path or id quoted safely for YAML
    return f"""# Written by nova init: check it with  nova preflight --config THIS_FILE
# Train it with  nova train --config THIS_FILE  (every key: nova config, docs/config.md)
name: {c.name}                       # names the run directory: checkpoints/{c.name}
model:
  base: {q(c.model)}
  quantization: nf4                   # QLoRA: the base in 4 bits, the adapter trained in full precision
lora:
  r: 16                               # adapter rank; alpha is usually 2 x r
  alpha: 32
  dropout: 0.05
method: {c.method}
data:
  datasets:
    - path: {q(c.data)}
  max_length: {c.max_length}                    # tokens; longer records are truncated (the data report counts them)
  eval_split: {c.eval_split:g}                    # the holdout the eval loss is measured on
training:
  num_epochs: {c.num_epochs}                      # = {c.steps} optimizer steps of {c.effective} sequences
  micro_batch_size: {c.micro_batch_size}                # sequences per forward pass (what fits the memory)
  gradient_accumulation_steps: {c.gradient_accumulation_steps}     # micro batches per step: {c.effective} a step
  gradient_checkpointing: {str(c.gradient_checkpointing).lower()}       # recompute activations: less memory, slower
  learning_rate: {c.learning_rate:g}
  logging_steps: {max(1, min(10, c.eval_steps))}
  eval_steps: {c.eval_steps}
  save_steps: {c.eval_steps}
"""


def write_config(c: InitChoice, out: Path, force: bool = False) -> None:
    """Write the config (never over an existing file unless ``force``) and load it back through validation."""
    from nova.config.load import load_yaml_config
    from nova.files import write_text_atomic

    if out.exists() and not force:
        raise NovaError(f"{out} exists", hint="choose another --out, or pass --force to replace it")
    text = render(c)
    write_text_atomic(out, text)
    load_yaml_config(out)  # the same validation as any config: a bad choice here is nova's bug, said at once
