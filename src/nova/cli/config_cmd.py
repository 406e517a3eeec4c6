"""``nova config``: print the documented schema (every key, its type, default and meaning)."""

from __future__ import annotations

import typer

from nova.console import echo


def config(
    section: str | None = typer.Argument(None, help="Only this section, e.g. lora or training."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the Markdown reference (docs/config.md)."),
) -> None:
    """Show every config key with its type, default and description."""
    from nova.config.reference import reference_lines

    for line in reference_lines(section, markdown=markdown):
        if markdown:  # a document for a file: never wrapped
            typer.echo(line)
        else:  # a description continues at its own indent, under itself
            echo(line, indent=len(line) - len(line.lstrip()) if line.startswith(" " * 6) else None)
