"""Options shared by several commands, declared once so their help text is identical everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Phase or pipeline YAML file.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key, e.g. --set training.max_steps=50 (repeatable)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of text.")]
TrustRemoteCodeOpt = Annotated[
    bool,
    typer.Option("--trust-remote-code", help="Let the model's own Python code run (auto_map in its config or "
                 "tokenizer), for models you trust. Only this flag allows it: a run directory's config.yaml "
                 "never does."),
]
