"""``nova models``: manage local base models (GGUF import)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Manage local base models.", no_args_is_help=True)
