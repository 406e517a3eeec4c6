"""``nova models``: manage local base models (GGUF import).

Only typer and the standard library are imported here; the import itself (torch, transformers,
gguf) is loaded when the command runs, so ``nova --help`` stays fast.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from nova.console import echo

app = typer.Typer(help="Manage local base models.", no_args_is_help=True, rich_markup_mode=None)

DTYPE_CHOICES = ("float32", "bfloat16", "float16")


@app.command("import-gguf")
def import_gguf_cmd(
    gguf_file: Annotated[
        Path, typer.Argument(help="The .gguf model file to import.", metavar="GGUF_FILE", show_default=False)
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output model directory (default: models/<file stem, lowercased>)."),
    ] = None,
    dtype: Annotated[
        str,
        typer.Option("--dtype", help="Weight dtype: float32 (lossless, default), bfloat16 or float16."),
    ] = "float32",
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty output directory.")] = False,
) -> None:
    """Convert a GGUF file into a Hugging Face model directory that nova can train."""
    from nova.errors import NovaError
    from nova.files import check_output_dir, dir_size, human_bytes
    from nova.model.gguf import PROVENANCE_FILE, check_gguf_file, default_import_dir, import_gguf

    if dtype not in DTYPE_CHOICES:
        raise NovaError(f"--dtype must be one of {', '.join(DTYPE_CHOICES)}, got '{dtype}'")
    check_gguf_file(gguf_file)
    dest = out if out is not None else default_import_dir(gguf_file, "models")
    check_output_dir(dest.expanduser(), force, marker=PROVENANCE_FILE)  # before the banner: a refusal says only that
    echo(f"importing {gguf_file} -> {dest} ({dtype})")
    start = time.monotonic()
    result = import_gguf(gguf_file, dest, dtype=dtype, force=force)
    size = human_bytes(dir_size(result))
    echo(f"imported {gguf_file.name} -> {result} ({size}, {time.monotonic() - start:.1f} s)")
