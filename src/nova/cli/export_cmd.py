"""``nova export``: a merged model or a run's adapter chain, in the formats other tools load as they are.

From a merged model (``--model``): a GGUF file (llama.cpp) or an Ollama model directory. From a
run directory (``--run``): one standalone PEFT adapter of the whole chain (``peft``), the chain as a
GGUF LoRA adapter (``gguf``), or an Ollama directory with the base's GGUF and that adapter.

Registered by ``nova.cli.main`` with ``app.command("export")(export_cmd.export)``. Only typer, the
standard library and the GGUF weight types (``nova.export.gguf_export`` imports no torch, gguf or
numpy at import time) are imported here; the exporters load torch and transformers when they run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from nova.console import echo
from nova.export.gguf_export import EXPORT_INFO, OUTTYPES

FORMATS = ("gguf", "ollama", "peft")


def _check_choice(fmt: str, outtype: str | None, model: Path | None, run: Path | None) -> None:
    from nova.errors import NovaError

    if fmt not in FORMATS:
        raise NovaError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    if outtype is not None and outtype not in OUTTYPES:
        raise NovaError(f"--outtype must be one of {', '.join(OUTTYPES)}, got '{outtype}'")
    if (model is None) == (run is None):
        raise NovaError("give either --model MERGED_DIR or --run RUN_DIR",
                        hint="--model: a merged model (nova merge); --run: a run directory, for its adapters")
    if fmt == "peft" and run is None:
        raise NovaError("--format peft exports a run's adapters", hint="pass --run RUN_DIR (a phase of nova train)")
    if fmt == "peft" and outtype is not None:
        raise NovaError("--outtype does not apply to --format peft (the adapter is written in fp32)")
    if model is not None and not (model / "config.json").is_file():
        raise NovaError(f"model directory not found: {model}" if not model.exists() else
                        f"{model} has no config.json", hint="pass the directory written by 'nova merge'")


def _require_gguf_name(out: Path) -> None:
    from nova.errors import NovaError

    if out.suffix.lower() != ".gguf":
        raise NovaError(f"--out should name a .gguf file, got '{out}'")


def _check_output(out: Path, fmt: str, force: bool) -> None:
    """The output checks the exporter makes, made before the banner: a refused --out says nothing else."""
    from nova.files import check_output_dir, check_output_file

    if fmt == "gguf":
        _require_gguf_name(out)
        check_output_file(out.expanduser(), force)
    else:
        check_output_dir(out.expanduser(), force, marker=EXPORT_INFO)


def _say(line: str) -> None:
    echo(line, err=True)


def _from_model(model: Path, out: Path, fmt: str, outtype: str | None, force: bool, check: bool) -> Any:
    from nova.export.model_export import export_model

    if fmt == "gguf":
        _require_gguf_name(out)
        echo(f"exporting {model} -> {out} (gguf, {outtype or 'f16'})")
    else:
        echo(f"exporting {model} -> {out} (ollama{', gguf ' + outtype if outtype else ', safetensors'})")
    return export_model(model, out, fmt, outtype, force=force, check=check, say=_say)


def _from_run(run: Path, out: Path, fmt: str, outtype: str | None, force: bool, base_from: str | None,
              check: bool) -> Any:
    from nova.export.run_export import RunExportRequest, export_run

    if fmt == "peft":
        echo(f"exporting the adapter chain of {run} -> {out} (one standalone PEFT adapter)")
    elif fmt == "gguf":
        _require_gguf_name(out)
        echo(f"exporting the adapter chain of {run} -> {out} (GGUF LoRA adapter, {outtype or 'f16'})")
    else:
        echo(f"exporting {run} -> {out} (ollama: base GGUF {outtype or 'f16'} + LoRA adapter GGUF)")
    return export_run(RunExportRequest(run, out, fmt, outtype, force, base_from, check), say=_say)


def _report(result: Any, fmt: str, seconds: float) -> None:
    """Each file written, with its size, then the total, the parity figures and any warning."""
    from nova.files import human_bytes

    for note in result.notes:
        echo(f"note: {note}")
    path = Path(result.path)
    files = result.files or (sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    echo("wrote:")
    for file in files:
        echo(f"  {file}  {human_bytes(file.stat().st_size)}")
    types = ", ".join(f"{n} {k}" for k, n in sorted(result.tensor_types.items()))
    detail = f"; tensors: {types}" if types else ""
    echo(f"total {human_bytes(result.size_bytes)} in {len(files)} file(s){detail} ({seconds:.1f} s)")
    if result.parity is not None:
        for line in result.parity.lines():
            echo(line)
    for warning in result.warnings:
        echo(f"warning: {warning}")
    if fmt == "ollama":
        echo(f"next: cd {path} && ollama create NAME -f Modelfile")


def export(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output: a .gguf file (gguf), or a directory.")],
    model: Annotated[Path | None, typer.Option("--model", "-m", help="Merged model directory (from 'nova "
                                               "merge').")] = None,
    run: Annotated[Path | None, typer.Option("--run", "-r", help="Run directory of a phase: export its adapter "
                                             "chain (peft; gguf: a LoRA adapter; ollama: base + adapter).")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="gguf, ollama or peft (peft needs --run).")] = "gguf",
    outtype: Annotated[
        str | None,
        typer.Option("--outtype", help="GGUF weight type: f16 (default), q8_0, f32, or llama.cpp's presets q4_0, "
                                       "q4_k_m, q5_k_m, q6_k (need the xllamacpp package). With --format ollama: "
                                       "write a GGUF of this type instead of copying safetensors. A GGUF LoRA "
                                       "adapter is f16 or f32."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output.")] = False,
    base_from: Annotated[
        str | None,
        typer.Option("--from", help="With --run (gguf, ollama), for a QLoRA run: the base the adapter goes with. "
                                    "dequantized (default): the nf4/int8 weights the chain was trained on, "
                                    "dequantized, so base + adapter is the trained model; original: the base's own "
                                    "weights, which is not the trained model (recorded, and warned with the "
                                    "measured difference)."),
    ] = None,
    no_check: Annotated[bool, typer.Option("--no-check", help="Skip the parity check (the export run with llama.cpp "
                                           "or PEFT against the model it comes from); recorded in "
                                           "nova_export.json.")] = False,
    eval_task: Annotated[str | None, typer.Option("--eval-task", help="After a GGUF export of a merged model, score "
                                                  "this task (as nova eval names it) on the model and on the GGUF "
                                                  "in llama.cpp, side by side.")] = None,
) -> None:
    """Export a merged model (GGUF, Ollama) or a run's adapter chain (PEFT, GGUF LoRA, Ollama), then check it."""
    _check_choice(fmt, outtype, model, run)
    _check_output(out, fmt, force)
    start = time.monotonic()
    if model is not None:
        if base_from is not None:
            from nova.errors import NovaError

            raise NovaError("--from applies to --run exports", hint="a merged model chose its base when it was "
                            "merged (nova merge --from)")
        result = _from_model(model, out, fmt, outtype, force, not no_check)
    else:
        assert run is not None
        result = _from_run(run, out, fmt, outtype, force, base_from, not no_check)
    _report(result, fmt, time.monotonic() - start)
    if eval_task is not None:
        _eval_check(model, Path(result.path), fmt, eval_task)


EXPORT_EVAL_LIMIT = 50  # items of --eval-task: a quick check, the same items for the model and the file


def _eval_check(model: Path | None, path: Path, fmt: str, task: str) -> None:
    """--eval-task: the task on the merged model and on its GGUF (nova.eval), as one small table."""
    from nova.errors import NovaError
    from nova.eval.run import EvalRequest, evaluate
    from nova.runs.eval_results import table_lines

    if model is None or fmt != "gguf":
        raise NovaError("--eval-task scores a GGUF file exported from a merged model",
                        hint="use it with --model MERGED --format gguf; score other exports with nova eval")
    results = evaluate(EvalRequest(model, [task], [str(path)], EXPORT_EVAL_LIMIT), say=echo)
    for line in table_lines(results):
        echo(line)
