"""``nova demo``: the demo end to end, the same on Linux, macOS and Windows (scripts/demo.sh calls it).

Doica (SFT on Romanian chats) then Sora (SFT, then DPO) on SmolLM2-135M, then the tuned model
beside the base, merged into a standalone model, exported for llama.cpp and Ollama, the
Doica + Sora chain as one standalone PEFT adapter, and the eval table: the base, Doica and Sora on
a Romanian task, an English task and the held-out identity preference pairs.
Each step is the ``nova`` command a user would type, run in its own process as the shell script
ran it, so what the demo shows is what those commands do; the first step that fails stops the
demo with its exit code.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated

import typer

from nova.console import echo
from nova.errors import NovaError

PIPELINE = "configs/demo/pipeline.yaml"
RUN = "checkpoints/demo/sora"
MERGED = f"{RUN}-merged"
GGUF = "checkpoints/demo/sora-f16.gguf"
# The eval table: a Romanian task, an English task, DPO's held-out pairs; 50 items each (docs/eval.md).
# The GGUF is left out here: llama.cpp scores one sequence at a time, slow on 2 cores (docs/eval.md, Speed).
EVAL_TASKS = "xquad_ro,hellaswag,preference"
# Prompts that are not in the training data: the base, Doica's model and Sora's model side by side.
PROMPTS = ("Tell me who you are, in one sentence.", "Cine esti tu, de fapt?", "Care este capitala Romaniei?")

STEPS: tuple[tuple[str, ...], ...] = (
    ("train", "--config", PIPELINE),
    ("infer", "--model", RUN, "--compare-phases", "--max-new-tokens", "40",
     *(arg for p in PROMPTS for arg in ("--prompt", p))),
    ("merge", "--run", RUN, "--force"),
    ("export", "--model", MERGED, "--format", "gguf", "--out", GGUF, "--force"),
    ("export", "--model", MERGED, "--format", "ollama", "--out", "checkpoints/demo/sora-ollama", "--force"),
    ("export", "--run", RUN, "--format", "peft", "--out", "checkpoints/demo/sora-standalone", "--force"),
    ("eval", "checkpoints/demo", "--tasks", EVAL_TASKS, "--models", "base,doica,sora", "--limit", "50"),
    ("status", "checkpoints/demo"),
)


def _run_step(argv: Sequence[str]) -> int:
    return subprocess.run([sys.executable, "-m", "nova", *argv], check=False).returncode


def run_demo(root: Path, run_step: Callable[[Sequence[str]], int] = _run_step,
             say: Callable[[str], None] = print) -> None:
    """Run every step in ``root`` (the nova checkout: the demo's configs and data are relative to it)."""
    if not (root / PIPELINE).is_file():
        raise NovaError(f"{PIPELINE} not found in {root.resolve()}: the demo runs from the nova checkout",
                        hint="cd into the directory nova was cloned to, then run nova demo")
    for step in STEPS:
        say("demo: nova " + " ".join(f'"{a}"' if " " in a else a for a in step))
        code = run_step(step)
        if code != 0:
            raise NovaError(f"demo step 'nova {step[0]}' failed with exit code {code}",
                            hint="its message is above; fix it and run nova demo again (finished phases are "
                            "skipped)")


def demo(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the steps without running them.")] = False,
) -> None:
    """Train the demo pipeline, compare the tuned model with the base, merge, export, score (run from the checkout)."""
    if dry_run:
        run_demo(Path.cwd(), run_step=lambda step: 0, say=echo)
    else:
        run_demo(Path.cwd(), say=echo)
