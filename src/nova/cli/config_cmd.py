"""``nova config``: print the documented schema (every key, its type, default and meaning)."""

from __future__ import annotations

import typer


def config(
    section: str | None = typer.Argument(None, help="Only this section, e.g. lora or training."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the Markdown reference (docs/config.md)."),
) -> None:
    """Show every config key with its type, default and description."""
    from nova.config.reference import reference_lines

    for line in reference_lines(section, markdown=markdown):
        typer.echo(line)
