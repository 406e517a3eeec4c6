"""``nova export``: a merged model as a GGUF file (llama.cpp) or an Ollama model directory.

Registered by ``nova.cli.main`` with ``app.command("export")(export_cmd.export)``. Only typer, the
standard library and the GGUF weight types (``nova.export.gguf_export`` imports no torch, gguf or
numpy at import time) are imported here; the exporters load torch and transformers when they run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from nova.export.gguf_export import OUTTYPES

FORMATS = ("gguf", "ollama")


def export(
    model: Annotated[Path, typer.Option("--model", "-m", help="Merged model directory (from 'nova merge').")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output: a .gguf file, or a directory for ollama.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="gguf or ollama.")] = "gguf",
    outtype: Annotated[
        str | None,
        typer.Option("--outtype", help="GGUF weight type: f16 (default for gguf), q8_0 or f32. With "
                                       "--format ollama: write a GGUF of this type instead of copying safetensors."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output.")] = False,
) -> None:
    """Export a merged model for llama.cpp (GGUF) or Ollama (Modelfile + weights)."""
    from nova.errors import NovaError
    from nova.files import human_bytes

    if fmt not in FORMATS:
        raise NovaError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    if outtype is not None and outtype not in OUTTYPES:
        raise NovaError(f"--outtype must be one of {', '.join(OUTTYPES)}, got '{outtype}'")
    if not (model / "config.json").is_file():
        raise NovaError(f"model directory not found: {model}" if not model.exists() else
                        f"{model} has no config.json", hint="pass the directory written by 'nova merge'")
    start = time.monotonic()
    if fmt == "gguf":
        from nova.export.gguf_export import export_gguf

        if out.suffix.lower() != ".gguf":
            raise NovaError(f"--out should name a .gguf file, got '{out}'")
        typer.echo(f"exporting {model} -> {out} (gguf, {outtype or 'f16'})")
        result = export_gguf(model, out, outtype=outtype or "f16", force=force)
        types = ", ".join(f"{n} {k}" for k, n in sorted(result.tensor_types.items()))
        detail = f"{human_bytes(result.size_bytes)}; tensors: {types}"
    else:
        from nova.export.ollama import export_ollama

        typer.echo(f"exporting {model} -> {out} (ollama{', gguf ' + outtype if outtype else ', safetensors'})")
        result = export_ollama(model, out, outtype=outtype, force=force)
        detail = human_bytes(result.size_bytes)
    for note in result.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"wrote {result.path} ({detail}, {time.monotonic() - start:.1f} s)")
    if fmt == "ollama":
        typer.echo(f"next: cd {result.path} && ollama create NAME -f Modelfile")
