"""``nova data``: check and preview training data before any model loads."""

from __future__ import annotations

import typer

app = typer.Typer(help="Check and preview training data.", no_args_is_help=True)
