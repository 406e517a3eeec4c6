"""Read every record of a stage's sources, validate it, and keep the good ones as examples.

Each bad record is counted by reason and remembered as a ``Problem`` naming file:line; the
caller decides (``on_error``) whether that stops the run. Nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nova.config.data_schema import DatasetSpec
from nova.data import formats
from nova.data.prompts import FORMAT as PROMPT_FORMAT
from nova.data.prompts import normalize_prompt
from nova.data.records import RecordProblem, apply_columns, apply_roles, dedup_key, detect_format, normalize
from nova.data.report import DataReport, SourceReport
from nova.data.sources import FileProblem, RawRecord, hub_records, listing, looks_like_hub_id, read_file
from nova.data.unpaired import normalize_unpaired
from nova.errors import DataError, Problem
from nova.methods import method_spec, reading


@dataclass(frozen=True)
class Example:
    """A valid, normalized record and where it came from."""

    where: str
    example: dict[str, Any]
    key: str
    source: int


@dataclass(frozen=True)
class LoadContext:
    """What validation depends on besides the record itself."""

    method: str
    system_prompt: str | None
    report: DataReport
    fields: tuple[str, ...] = ()  # GRPO: record fields its rewards read (every record must have them)

    @property
    def records(self) -> str:
        """The rows the stage's method trains on (nova.methods), which decide the formats it reads."""
        return method_spec(self.method).records


def load_sources(specs: list[DatasetSpec], ctx: LoadContext, *, eval_side: bool = False) -> list[Example]:
    """All valid examples of the given sources, in source and file order, with per-source caps."""
    return list(iter_sources(specs, ctx, eval_side=eval_side))


def iter_sources(specs: list[DatasetSpec], ctx: LoadContext, *, eval_side: bool = False) -> Iterator[Example]:
    """``load_sources`` one example at a time (streaming reads files of any size in bounded memory): the
    counts in ``ctx.report`` are those of the records read so far, complete once the iterator is exhausted."""
    for index, spec in enumerate(specs):
        source = SourceReport(path=spec.path)
        (ctx.report.eval_sources if eval_side else ctx.report.sources).append(source)
        for kept, example in enumerate(_load_source(spec, index, ctx, source), start=1):
            if spec.max_samples is None or kept <= spec.max_samples:
                yield example
            else:  # the first max_samples valid records are used; the others are validated and counted
                source.over_max_samples += 1
                ctx.report.over_max_samples += 1


def _load_source(spec: DatasetSpec, index: int, ctx: LoadContext, source: SourceReport) -> Iterator[Example]:
    if looks_like_hub_id(spec.path):
        try:
            yield from _load_records(spec, index, ctx, source, None, hub_records(spec.path), spec.path)
        except FileProblem as exc:
            _file_problem(ctx.report, exc)
        return
    try:
        found = listing(Path(spec.path).expanduser(), spec.ignore)
    except FileProblem as exc:
        if exc.reason == "cannot_read":  # never skipped: the config must say these files are not data
            raise DataError(f"data directory {spec.path} holds files nova cannot read",
                            [Problem(exc.where, exc.message, exc.hint)]) from None
        _file_problem(ctx.report, exc)
        return
    if found.directory:
        source.files_total, source.not_read = found.total, dict(found.not_read)
        for label, n in found.not_read.items():
            ctx.report.skipped_files[f"not read: {label}"] += n
    for file in found.files:
        source.files += 1
        used = 0
        try:
            header, records = read_file(file)
            for example in _load_records(spec, index, ctx, source, header, records, str(file)):
                used += 1
                yield example
        except FileProblem as exc:
            if used:  # records before the fault were read and are used (streaming cannot take them back): say so
                exc = FileProblem(exc.reason, exc.where, f"{exc.message}; the {used} records before it are used",
                                  exc.hint)
            _file_problem(ctx.report, exc)


def _file_problem(report: DataReport, exc: FileProblem) -> None:
    report.skipped_files[exc.reason] += 1
    report.add_file_problem(Problem(exc.where, exc.message, exc.hint))


def _wrong_method_hint(fmt: str, method: str) -> str:
    """What to do with records of ``fmt`` that a ``method`` stage cannot train on."""
    shape = formats.records_of(fmt)
    if shape == "sequences":  # chats or text in a stage that reads something else: say what it needs
        return f"a {method} stage needs {formats.NEEDS[method_spec(method).records]}"
    fits = reading(shape)
    return f"use method: {', '.join(fits[:-1]) + ' or ' if len(fits) > 1 else ''}{fits[-1]} for {formats.CALLED[shape]}"


def _check_header(spec: DatasetSpec, header: list[str], where: str) -> str | None:
    """Tabular files: the columns the format needs must exist (one problem for the file, not per row)."""
    renamed = spec.columns
    for ours, theirs in renamed.items():
        if theirs not in header:
            raise FileProblem("missing_column", f"{where}:1", f"no column '{theirs}' (mapped to '{ours}' by "
                              f"columns); the columns are: {', '.join(header)}")
    names = [next((o for o, t in renamed.items() if t == h), h) for h in header]
    fmt = spec.format if spec.format != "auto" else detect_format(dict.fromkeys(names))
    if fmt is None:
        raise FileProblem("unknown_format", f"{where}:1", f"no known columns ({', '.join(header)})",
                          "set format: and columns: for this dataset")
    for need in formats.required_fields(fmt):
        if need not in names:
            raise FileProblem("missing_column", f"{where}:1", f"the {fmt} format needs a column '{need}'; "
                              f"the columns are: {', '.join(header)}", "add it or map it with columns:")
    return fmt


def _check_prompt_header(spec: DatasetSpec, header: list[str], where: str, fields: tuple[str, ...],
                         method: str) -> str:
    """Tabular prompt files (GRPO): a prompt column and one per field the rewards read."""
    names = [next((o for o, t in spec.columns.items() if t == h), h) for h in header]
    for need in ("prompt", *fields):
        if need not in names:
            raise FileProblem("missing_column", f"{where}:1", f"a {method} stage needs a column '{need}'; the columns "
                              f"are: {', '.join(header)}", "add it or map it with columns:")
    return PROMPT_FORMAT


def _load_records(spec: DatasetSpec, index: int, ctx: LoadContext, source: SourceReport,
                  header: list[str] | None, records: Any, where: str) -> Iterator[Example]:
    report = ctx.report
    if ctx.records == "prompts" and header is not None:
        file_format = _check_prompt_header(spec, header, where, ctx.fields, ctx.method)
    else:
        file_format = _check_header(spec, header, where) if header is not None else None
    if spec.format != "auto":
        file_format = spec.format
    for raw in records:
        source.read += 1
        report.read += 1
        try:
            fmt, example = _validate(raw, spec, file_format, ctx)
            key = _key(example)
        except RecordProblem as exc:
            source.skipped += 1
            report.add_problem(exc.reason, Problem(raw.where, exc.message, exc.hint))
            if exc.reason == "wrong_method":
                _skip_rest(records, source, report)
                break
            continue
        file_format = file_format or fmt
        source.kept += 1
        source.formats[fmt] = source.formats.get(fmt, 0) + 1
        yield Example(raw.where, example, key, index)


def _key(example: dict[str, Any]) -> str:
    """The example's dedup key; a lone surrogate (JSON's "\\ud800" unpaired, which no tokenizer can encode) is a
    problem of the record, found here where its text is first encoded."""
    try:
        return dedup_key(example)
    except UnicodeEncodeError as exc:
        char = exc.object[exc.start:exc.start + 1].encode("ascii", "backslashreplace").decode("ascii")
        raise RecordProblem("not_utf8", f"the text holds a lone surrogate ({char}), which is not a character",
                            "fix the escape: a \\ud800-\\udfff escape must be one of a pair") from None


def _skip_rest(records: Any, source: SourceReport, report: DataReport) -> None:
    """A file in the wrong format for the method: count its remaining records under one problem."""
    for _ in records:
        source.read += 1
        source.skipped += 1
        report.read += 1
        report.skipped["wrong_method"] += 1


def _validate(raw: RawRecord, spec: DatasetSpec, file_format: str | None,
              ctx: LoadContext) -> tuple[str, dict[str, Any]]:
    if raw.problem is not None:
        raise raw.problem
    assert raw.data is not None
    record = apply_roles(apply_columns(raw.data, spec.columns), spec.roles)
    if ctx.records == "prompts":
        return _prompt_record(record, spec, ctx)
    detected = detect_format(record)
    fmt = spec.format if spec.format != "auto" else detected
    if fmt is None:
        fields = ", ".join(sorted(record)) or "none"
        raise RecordProblem("unknown_format", f"no known fields (found: {fields})",
                            "expected messages, conversations, prompt+completion, instruction+output, "
                            "chosen+rejected or text; or set format:/columns:")
    if ctx.records == "feedback" and spec.format == "auto" and fmt in formats.FEEDBACK_SHAPES:
        fmt = "unpaired"  # a chat without its verdict: reported as feedback missing its label
    if spec.format == "auto" and file_format is not None and fmt != file_format:
        raise RecordProblem("mixed_formats", f"this record is '{fmt}' but the file's first record is "
                            f"'{file_format}' (two formats in one file)", "split the file or fix the record")
    if fmt not in formats.formats_for(ctx.records):
        raise RecordProblem("wrong_method", f"'{fmt}' records cannot train a {ctx.method} stage",
                            _wrong_method_hint(fmt, ctx.method))
    if fmt == "unpaired":
        return fmt, normalize_unpaired(record, ctx.system_prompt)
    return fmt, normalize(record, fmt, system_prompt=ctx.system_prompt, enable_thinking=spec.enable_thinking)


def _prompt_record(record: dict[str, Any], spec: DatasetSpec, ctx: LoadContext) -> tuple[str, dict[str, Any]]:
    """A GRPO stage reads every record as a prompt and its reference fields (nova.data.prompts)."""
    if spec.format not in ("auto", PROMPT_FORMAT):
        raise RecordProblem("wrong_method", f"'{spec.format}' records cannot train a {ctx.method} stage",
                            f"a {ctx.method} stage reads prompt-only records (format: auto or prompt)")
    return PROMPT_FORMAT, normalize_prompt(record, ctx.system_prompt, ctx.fields)
