"""``nova data``: check and preview training data before any model loads.

Only typer and the standard library are imported at module level; the data pipeline (and
transformers, for the token view) load when a command runs, so ``nova --help`` stays fast.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from nova.cli.options import JsonOpt, SetOpt
from nova.console import echo
from nova.data.formats import FIELDS, FORMAT_CHOICES
from nova.methods import METHOD_NAMES

if TYPE_CHECKING:
    from nova.config.data_schema import DataConfig

app = typer.Typer(help="Check and preview training data.", no_args_is_help=True, rich_markup_mode=None)

FileArg = Annotated[Path | None, typer.Argument(help="A data file or directory (instead of --config).",
                                                show_default=False)]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Phase or pipeline YAML file.")]
FormatOpt = Annotated[str, typer.Option("--format", help=f"With FILE: {', '.join(FORMAT_CHOICES)} (docs/data.md).")]
MethodOpt = Annotated[str | None, typer.Option("--method", help=f"With FILE: {', '.join(METHOD_NAMES)} (default: "
                                               "the first of them that reads the file's format).")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="With FILE: model directory or hub id whose "
                                              "tokenizer gives the token view.")]
MaxLenOpt = Annotated[int, typer.Option("--max-length", help="With FILE: the longest sequence, in tokens.")]
OnErrorOpt = Annotated[str, typer.Option("--on-error", help="With FILE: fail (default) or skip bad records.")]
ColumnsOpt = Annotated[str | None, typer.Option("--columns", help="With FILE: map the file's field names to nova's, "
                                                "e.g. prompt=question,chosen=response_j,rejected=response_k.")]
RolesOpt = Annotated[str | None, typer.Option("--roles", help="With FILE: map the file's role values to nova's, "
                                              "e.g. chatgpt=assistant,human=user (a dataset's roles: in a config).")]


@dataclass
class Target:
    """One stage's data to check, with the model whose tokenizer gives the token view."""

    label: str
    data: DataConfig
    method: str
    model: Any  # ModelConfig | None
    seed: int = 42
    dpo: Any = None  # the stage's length settings (its dpo, kto, orpo, simpo or grpo section); None for a file


def parse_columns(text: str | None, *, any_field: bool = False) -> dict[str, str]:
    """``prompt=question,chosen=response_j`` as {nova field: file field}; NovaError naming a bad part.
    ``any_field``: a grpo stage passes any field to its rewards, so any name may be a target."""
    import difflib

    from nova.errors import NovaError

    mapping: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        ours, sep, theirs = (s.strip() for s in part.partition("="))
        if not sep or not ours or not theirs:
            raise NovaError(f"--columns: '{part.strip()}' is not NOVA_FIELD=FILE_FIELD",
                            hint="e.g. --columns prompt=question,chosen=response_j,rejected=response_k")
        if ours not in FIELDS and not any_field:
            close = difflib.get_close_matches(ours, FIELDS, n=1)
            raise NovaError(f"--columns: '{ours}' is not a field nova reads" +
                            (f" (did you mean '{close[0]}'?)" if close else ""),
                            hint=f"the fields: {', '.join(FIELDS)} (with --method grpo: any field its rewards read)")
        if ours in mapping:
            raise NovaError(f"--columns maps '{ours}' twice")
        mapping[ours] = theirs
    return mapping


def parse_roles(text: str | None) -> dict[str, str]:
    """``chatgpt=assistant,human=user`` as {the file's role: nova's role}; NovaError naming a bad part."""
    from nova.errors import NovaError

    roles: dict[str, str] = {}
    for part in (text or "").split(","):
        theirs, sep, ours = (s.strip() for s in part.partition("="))
        if not part.strip():
            continue
        if not sep or not theirs or ours not in ("system", "user", "assistant", "tool"):
            raise NovaError(f"--roles: '{part.strip()}' is not FILE_ROLE=ROLE",
                            hint="ROLE is system, user, assistant or tool, e.g. --roles chatgpt=assistant,human=user")
        roles[theirs] = ours
    return roles


def _file_target(file: Path, fmt: str, method: str | None, model: str | None, max_length: int,
                 on_error: str, columns: dict[str, str] | None = None, roles: dict[str, str] | None = None) -> Target:
    from pydantic import ValidationError

    from nova.config.data_schema import DataConfig, DatasetSpec
    from nova.errors import NovaError

    try:
        spec = DatasetSpec(path=str(file), format=fmt, columns=columns or {}, roles=roles or {})  # type: ignore[arg-type]
        data = DataConfig(datasets=[spec], max_length=max_length, on_error=on_error)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        raise NovaError(f"{file}: {err['msg'].removeprefix('Value error, ')}",
                        hint=f"check the {'/'.join(str(p) for p in err['loc']) or 'arguments'}") from None
    if method is None:
        method = _default_method(fmt if fmt != "auto" else _first_format(file, columns))
    if method not in METHOD_NAMES:
        raise NovaError(f"--method must be one of {', '.join(METHOD_NAMES)}, got '{method}'")
    model_cfg = None
    if model is not None:
        from nova.config.schema import ModelConfig

        model_cfg = ModelConfig(base=model)
    return Target(str(file), data, method, model_cfg)


def _default_method(fmt: str | None) -> str:
    """The first method (registry order) that reads the format's rows; sft when the format is unknown."""
    from nova.data.formats import records_of
    from nova.methods import reading

    return reading(records_of(fmt))[0] if fmt is not None else METHOD_NAMES[0]


def _first_format(file: Path, columns: dict[str, str] | None = None) -> str | None:
    """The format of the first record (with --columns applied), so `nova data check prefs.jsonl` needs no
    --method."""
    from nova.data.records import RecordProblem, apply_columns, detect_format
    from nova.data.sources import FileProblem, list_files, read_file

    try:
        for path in list_files(file):
            _, records = read_file(path)
            for raw in records:
                if raw.data is not None:
                    return detect_format(apply_columns(raw.data, columns or {}))
    except (FileProblem, RecordProblem):
        return None
    return None


def _config_targets(config: Path, overrides: list[str] | None) -> list[Target]:
    from nova.config import load_yaml_config
    from nova.config.schema import PhaseConfig
    from nova.plan import make_plan, planned_stages

    loaded = load_yaml_config(config, overrides)
    cfg = loaded.config
    if isinstance(cfg, PhaseConfig) and cfg.start_from is not None and cfg.model is None:
        # A later phase's own file (its base comes from the pipeline): its records can be
        # checked without the pipeline; the token view needs the model, so it is left out.
        pairs = [(stage, None) for stage in planned_stages(cfg)]
    else:
        pairs = [(stage, phase.model) for phase in make_plan(loaded).phases for stage in phase.stages]
    return [Target(f"{stage.label} ({stage.method})", stage.config.data, stage.method, model,
                   stage.config.training.seed, stage.config.length_settings) for stage, model in pairs]


def _targets(file: Path | None, config: Path | None, overrides: list[str] | None, fmt: str,
             method: str | None, model: str | None, max_length: int, on_error: str,
             columns: str | None = None, roles: str | None = None) -> list[Target]:
    from nova.errors import NovaError

    if (file is None) == (config is None):
        raise NovaError("give either a data FILE or --config FILE", hint="e.g. nova data check --config "
                        "configs/demo/sft.yaml, or nova data check data/sora_en.jsonl")
    if config is not None:
        if columns is not None or roles is not None:
            raise NovaError("--columns and --roles apply to a data FILE",
                            hint="in a config, set columns: and roles: on the dataset")
        return _config_targets(config, overrides)
    assert file is not None
    return [_file_target(file, fmt, method, model, max_length, on_error,
                         parse_columns(columns, any_field=method is not None and _takes_any_field(method)),
                         parse_roles(roles))]


def _guessed_columns(file: Path) -> Any:
    """For a FILE whose fields nova does not know: a Problem naming the --columns mapping that would read it
    (nova.data.formats.guess_columns), or None. Printed only; applied when the user gives it."""
    from nova.data.formats import guess_columns
    from nova.data.sources import FileProblem, list_files, read_file
    from nova.errors import Problem

    try:
        first = list_files(file)[0]
        header, records = read_file(first)
        keys = header if header is not None else next((r.data for r in records if r.data is not None), None)
    except (FileProblem, OSError, IndexError):
        return None
    guess = guess_columns(list(keys or []))
    if not guess:
        return None
    flag = "--columns " + ",".join(f"{o}={t}" for o, t in guess.items())
    return Problem(str(first), f"nova would read its fields with {flag}", f"run again with {flag} to apply it")


def _takes_any_field(method: str) -> bool:
    """A method whose rows are prompts passes any record field to its rewards (GRPO)."""
    from nova.methods import method_spec

    return method in METHOD_NAMES and method_spec(method).records == "prompts"


def _tokenizer_for(model: Any, cache: dict[str, tuple[Any, str | None]]) -> tuple[Any, str | None]:
    if model is None:
        return None, "no model given (use --model, or --config with model.base)"
    if model.base not in cache:
        from nova.model.loading import tokenizer_for_check

        cache[model.base] = tokenizer_for_check(model)
    return cache[model.base]


@app.command("check")
def check(file: FileArg = None, config: ConfigOpt = None, overrides: SetOpt = None, fmt: FormatOpt = "auto",
          method: MethodOpt = None, model: ModelOpt = None, max_length: MaxLenOpt = 1024,
          on_error: OnErrorOpt = "fail", columns: ColumnsOpt = None, roles: RolesOpt = None,
          as_json: JsonOpt = False) -> None:
    """Validate every record (file:line for each problem) and show the token view of each stage."""
    from nova.data import check_data
    from nova.errors import DataError

    tokenizers: dict[str, tuple[Any, str | None]] = {}
    results: list[dict[str, Any]] = []
    failed: list[tuple[str, DataError]] = []
    for target in _targets(file, config, overrides, fmt, method, model, max_length, on_error, columns, roles):
        tokenizer, note = _tokenizer_for(target.model, tokenizers)
        try:
            report = check_data(target.data, method=target.method, tokenizer=tokenizer,  # type: ignore[arg-type]
                                seed=target.seed, dpo=target.dpo)
        except DataError as exc:
            guess = _guessed_columns(file) if file is not None and columns is None else None
            if guess is not None:
                exc = DataError(exc.title, [*exc.problems[:1], guess, *exc.problems[1:]])
            failed.append((target.label, exc))
            results.append({"stage": target.label, "ok": False, "error": exc.lines()})
            continue
        if note:
            report.token_note = note
        results.append({"stage": target.label, "ok": True, "report": report.to_dict()})
        if not as_json:
            echo(f"== {target.label}")
            for line in report.lines():
                echo(line)
    _finish(results, failed, as_json)


def _finish(results: list[dict[str, Any]], failed: list[tuple[str, Any]], as_json: bool) -> None:
    from nova.errors import DataError

    if as_json:
        typer.echo(json.dumps({"ok": not failed, "stages": results}, indent=2))
        if failed:
            raise typer.Exit(2)
        return
    if len(failed) == 1 and len(results) == 1:
        raise failed[0][1]
    if failed:
        label, first = failed[0]
        others = f" ({len(failed) - 1} more stage(s) failed)" if len(failed) > 1 else ""
        raise DataError(f"{label}: {first.title}{others}", first.problems)


@app.command("preview")
def preview_cmd(file: FileArg = None, config: ConfigOpt = None, overrides: SetOpt = None,
                n: Annotated[int, typer.Option("-n", help="How many examples to show.")] = 3,
                fmt: FormatOpt = "auto", method: MethodOpt = None, model: ModelOpt = None,
                max_length: MaxLenOpt = 1024, columns: ColumnsOpt = None, roles: RolesOpt = None) -> None:
    """Render the first N examples through the chat template, trained tokens wrapped in [[ ]]."""
    from nova.data.preview import preview
    from nova.errors import NovaError

    tokenizers: dict[str, tuple[Any, str | None]] = {}
    for target in _targets(file, config, overrides, fmt, method, model, max_length, "skip", columns, roles):
        tokenizer, note = _tokenizer_for(target.model, tokenizers)
        if tokenizer is None:
            raise NovaError(f"{target.label}: cannot preview without a tokenizer: {note}")
        echo(f"== {target.label}")
        for line in preview(target.data, tokenizer, method=target.method, n=n):
            echo(line)
