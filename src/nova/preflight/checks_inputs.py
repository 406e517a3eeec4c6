"""Checks of what a run reads: the model, its chat template, the data, learning rate and schedule.

The data is read through ``nova.data.sources`` (``list_files``, ``peek_record``, ``count_records``)
and ``detect_format``, the reader training uses, so preflight sees the same files, formats and
record counts; it reads only as much of each file as answers in well under a second.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from nova.config.data_schema import DataConfig, DatasetSpec
from nova.config.schema import ModelConfig, StageConfig
from nova.data import sources
from nova.data.formats import BY_NAME
from nova.data.listing import compression, data_suffix
from nova.data.records import RecordProblem, apply_columns, detect_format
from nova.errors import NovaError, ProblemList
from nova.files import MiB
from nova.preflight.model_source import ModelSource, hub_download_command
from nova.preflight.report import Check

EPOCHS_HIGH, EPOCHS_LOW = 5.0, 0.3
WARMUP_MAX = 0.2  # warmup over more of the run than this: most steps train below the learning rate
HOLDOUT_MIN = 5  # fewer held-out records than a handful: the eval loss (early stopping, alerts) is noise
WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.pt", "*.gguf")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "chat_template.jinja")
# The largest file preflight reads, by suffix (others: READ_WHOLE). JSON and CSV are parsed whole;
# JSON Lines are peeked at by their first line and counted by lines; Parquet counted from its footer.
READ_WHOLE = 64 * MiB
COMPRESSION_RATIO = 8  # a .gz/.zst file is sized as if it held this many times its bytes
PEEK_LIMITS = {".jsonl": math.inf}
COUNT_LIMITS = {".jsonl": 512 * MiB, ".parquet": math.inf}


def check_model(source: ModelSource) -> Check:
    """The model is reachable: a directory with config.json (weights optional for preflight), a .gguf, a hub id."""
    if source.kind == "local" and source.path is not None:
        if not any(any(source.path.glob(g)) for g in WEIGHT_GLOBS):
            return Check("model", "warn", f"{source.message} has config.json but no weight files: enough for "
                         "preflight, not for training", "put the model's weights (*.safetensors) next to config.json")
        return Check("model", "pass", source.message)
    if source.kind in ("gguf", "hub_cached"):
        return Check("model", "pass", source.message)
    if source.kind == "hub_remote":
        return Check("model", "warn", f"{source.message}; it will be downloaded on the first run",
                     f"download it ahead: {hub_download_command(source.base)}")
    if source.message.startswith("local path "):
        return Check("model", "fail", source.message, "fix model.base (a local directory with config.json or a "
                     ".gguf file)")
    return Check("model", "fail", source.message,
                 "check model.base (a local directory with config.json, a .gguf file, or a hub id); for a hub id "
                 f"run '{hub_download_command(source.base)}' while online")


def needs_chat_template(data: DataConfig) -> bool | None:
    """Whether the data is chat-shaped (so the tokenizer's template renders it); None if unknown."""
    answers = [_spec_needs_template(s) for s in [*data.datasets, *data.eval_datasets]]
    if any(a is True for a in answers):
        return True
    return None if any(a is None for a in answers) else False


def _spec_needs_template(spec: DatasetSpec) -> bool | None:
    """nova.data renders every format but plain text as a chat, through the template."""
    fmt = spec.format if spec.format != "auto" else _detected_format(spec)
    return None if fmt is None else BY_NAME[fmt].templated


def _detected_format(spec: DatasetSpec) -> str | None:
    """The format nova.data detects from the source's first record; None when that is not cheap to see."""
    files = _source_files(spec)
    if not files or not _small_enough(files[0], PEEK_LIMITS):
        return None
    try:
        record = sources.peek_record(files[0])
        return detect_format(apply_columns(record, spec.columns)) if record is not None else None
    except (sources.FileProblem, RecordProblem):
        return None


def _source_files(spec: DatasetSpec) -> list[Path] | None:
    """The files nova.data reads for a source; None for a hub dataset or a path that holds none."""
    if sources.looks_like_hub_id(spec.path):
        return None
    try:
        return sources.list_files(Path(spec.path).expanduser(), spec.ignore)
    except sources.FileProblem:
        return None


def _small_enough(path: Path, limits: dict[str, float]) -> bool:
    """Whether reading ``path`` this way stays within preflight's second (see PEEK_LIMITS, COUNT_LIMITS)."""
    limit = limits.get(data_suffix(path) or "", READ_WHOLE)
    return path.stat().st_size * (COMPRESSION_RATIO if compression(path) else 1) <= limit


def check_chat_template(model: ModelConfig, source: ModelSource, stages: list[StageConfig]) -> Check:
    """Chat-shaped data needs a template: the configured file, or the tokenizer's own."""
    need = [True if s.spec.cuts_prompts else needs_chat_template(s.data) for s in stages]  # prompts: templated
    if not any(n is True for n in need):
        if all(n is False for n in need):
            return Check("chat_template", "pass", "not needed (plain text data)")
        return Check("chat_template", "skip", "could not tell whether the data is chat-shaped")
    if model.chat_template:
        path = Path(model.chat_template).expanduser()
        if path.is_file():
            return Check("chat_template", "pass", f"model.chat_template {model.chat_template}")
        return Check("chat_template", "fail", f"model.chat_template {model.chat_template} does not exist",
                     "fix the path, or remove it to use the tokenizer's own template")
    if source.path is None:
        return Check("chat_template", "skip", f"cannot read the tokenizer of {source.base} yet ({source.kind})")
    if not any((source.path / f).is_file() for f in TOKENIZER_FILES):
        return Check("chat_template", "skip", f"no tokenizer files in {source.path}; the template is checked when "
                     "they are there")
    found = tokenizer_chat_template(source.path)
    if found:
        return Check("chat_template", "pass", f"the data is chat-shaped; the tokenizer has a template ({found})")
    return Check("chat_template", "fail", f"the data is chat-shaped but {source.path} has no chat template "
                 "(tokenizer_config.json, chat_template.jinja)",
                 "set model.chat_template to a Jinja file (e.g. ChatML), or use an instruct model")


def tokenizer_chat_template(directory: Path) -> str | None:
    """Which file of a tokenizer directory holds a chat template (read as JSON, not through transformers)."""
    for name in ("chat_template.jinja", "chat_template.json"):
        if (directory / name).is_file():
            return name
    try:
        cfg = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return "tokenizer_config.json" if isinstance(cfg, dict) and cfg.get("chat_template") else None


def check_data(label: str, stage: StageConfig) -> tuple[Check, int | None]:
    """nova.data's own validation; the record count feeds the schedule check. A skipped share above
    data.skip_warn_share warns and above skip_fail_share fails, as the dry run and training judge it."""
    if not stage.data.datasets:
        return Check(label, "fail", "data.datasets is empty", "add at least one training file under "
                     "data.datasets"), None
    from nova.data import check_data as data_check
    from nova.data.skipped import skipped_verdict

    try:
        report = data_check(stage.data, method=stage.method, dpo=stage.length_settings)
    except ProblemList as exc:
        shown = "; ".join(p.render() for p in exc.problems[:3])
        more = f" (+{len(exc.problems) - 3} more)" if len(exc.problems) > 3 else ""
        fix = next((p.hint for p in exc.problems if p.hint), None)
        return Check(label, "fail", f"{exc.title}: {shown}{more}",
                     (f"{fix}; " if fix else "") + "'nova data check' lists every problem"), None
    except NovaError as exc:
        return Check(label, "fail", exc.message, exc.hint or "run 'nova data check'"), None
    count = report.train_records if report.train_records > 0 else None
    held = report.eval_records
    text = (f"{count} training records" if count else "data is valid") + (f", {held} held out" if held else "")
    text += "".join(f"; {s.path}: {line}" for s in [*report.sources, *report.eval_sources]
                    if (line := s.files_line()) is not None)  # a directory: what was read, what was not and why
    verdict = skipped_verdict(report, stage.data)
    if verdict is not None:
        return Check(label, verdict[0], f"{text}; {verdict[1]}", verdict[2]), count
    if 0 < held < HOLDOUT_MIN:
        return Check(label, "warn", f"{text}: an eval loss over {held} record{'s' if held > 1 else ''} is noise",
                     f"hold out at least {HOLDOUT_MIN}: raise data.eval_split (now {stage.data.eval_split:g}), "
                     "give data.eval_datasets, or set eval_split: 0 for no eval loss at all"), count
    return Check(label, "pass", text), count


def check_learning_rate(label: str, stage: StageConfig, *, full: bool = False) -> Check:
    """LoRA wants a larger LR than full fine-tuning: 5e-6 barely moves an adapter; DPO wants less.
    ``full`` (adapter: full): every weight moves, so the range is about ten times lower. The ranges
    are the method's (its spec, nova.methods)."""
    lr = stage.training.learning_rate
    rates = stage.spec.full_lr if full else stage.spec.lora_lr
    assert rates is not None  # the schema refuses a method full fine-tuning does not run
    low, high = rates.low, rates.high
    kind, what = ("full fine-tuning", "the model") if full else ("LoRA", "the adapter")
    if lr < low:
        return Check(label, "warn", f"learning_rate {lr:g} is low for {kind} {stage.method} (typical "
                     f"{low:g}..{high:g}, {rates.suggested / lr:.0f}x below the usual {rates.suggested:g}); "
                     f"{what} will barely learn",
                     f"raise training.learning_rate to about {rates.suggested:g}, the typical rate for {kind} "
                     f"{stage.method}")
    if lr > high:
        return Check(label, "warn", f"learning_rate {lr:g} is high for {kind} {stage.method} (typical "
                     f"{low:g}..{high:g}); expect loss spikes or divergence",
                     f"lower training.learning_rate to about {rates.suggested:g}, the typical rate for {kind} "
                     f"{stage.method}")
    return Check(label, "pass", f"learning_rate {lr:g} (typical {low:g}..{high:g})")


def check_schedule(label: str, stage: StageConfig, records: int | None) -> Check:
    """Epochs implied by steps x effective batch vs the data: too many overfit, too few undertrain."""
    t = stage.training
    if t.max_steps is None:
        epochs = t.num_epochs
        basis = f"num_epochs {epochs:g}"
    else:
        if not records:
            return Check(label, "skip", f"max_steps {t.max_steps}: cannot tell epochs without a record count")
        # a step of GRPO answers each of its prompts num_generations times (its group)
        per_step = t.effective_batch_size // stage.spec.group_size(stage.method_settings)
        epochs = t.max_steps * per_step / records
        rows = "prompts" if stage.spec.generates else "sequences"
        basis = f"{t.max_steps} steps x {per_step} {rows} over {records} records"
    msg = f"{basis} = {epochs:.2f} epochs"
    if epochs > EPOCHS_HIGH:
        return Check(label, "warn", f"{msg}: likely to overfit (memorizes the data)",
                     f"lower training.max_steps/num_epochs to about {EPOCHS_HIGH:g} epochs or fewer, or add data")
    if epochs < EPOCHS_LOW:
        return Check(label, "warn", f"{msg}: under a third of the data is seen",
                     "raise training.max_steps (or use num_epochs: 1)")
    return Check(label, "pass", msg)


def run_steps(stage: StageConfig, records: int | None) -> int | None:
    """Optimizer steps of a stage: max_steps, else epochs over the records (None without a count)."""
    t = stage.training
    if t.max_steps is not None:
        return t.max_steps
    if not records:
        return None
    per_step = max(1, t.effective_batch_size // stage.spec.group_size(stage.method_settings))
    return max(1, math.ceil(records / per_step * t.num_epochs))


def check_warmup(label: str, stage: StageConfig, records: int | None) -> Check:
    """Warmup over more than WARMUP_MAX of the run leaves little of it at the intended learning rate."""
    t = stage.training
    steps = run_steps(stage, records)
    if t.warmup_steps is None:
        share, what = t.warmup_ratio, f"warmup_ratio {t.warmup_ratio:g}"
    elif steps:
        share, what = t.warmup_steps / steps, f"warmup_steps {t.warmup_steps} of {steps} steps"
    else:
        return Check(label, "skip", f"warmup_steps {t.warmup_steps}: cannot tell the run's steps without a record "
                     "count")
    if share > WARMUP_MAX:
        longer = " (longer than the run: it never reaches the learning rate)" if share >= 1 else ""
        fix = (f"set training.warmup_steps to about {max(1, round(steps * 0.05))} (5% of {steps} steps)" if steps
               else "") or "set training.warmup_ratio to about 0.05"
        return Check(label, "warn", f"{what} = {share:.0%} of the run{longer}; most of the run trains below "
                     f"the learning rate", fix + ", or unset warmup_steps and use warmup_ratio: 0.05")
    return Check(label, "pass", f"{what} = {share:.0%} of the run")


def count_records(data: DataConfig) -> int | None:
    """Training records from cheap counts (None when a source cannot be counted in well under a second)."""
    total = 0
    for spec in data.datasets:
        n = _count_source(spec)
        if n is None:
            return None
        total += min(n, spec.max_samples) if spec.max_samples else n
    if data.max_samples:
        total = min(total, data.max_samples)
    if not data.eval_datasets:
        total = int(total * (1 - data.eval_split))
    return total


def _count_source(spec: DatasetSpec) -> int | None:
    """Records in every file of a source as nova.data reads them, or None if one is too large or unreadable."""
    files = _source_files(spec)
    if files is None or not all(_small_enough(f, COUNT_LIMITS) for f in files):
        return None
    try:
        return sum(sources.count_records(f) for f in files)
    except sources.FileProblem:
        return None
