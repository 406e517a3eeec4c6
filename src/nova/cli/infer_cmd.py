"""``nova infer``: answer prompts with a tuned model (run directory, merged model, or base + adapter)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from nova.cli.options import JsonOpt
from nova.errors import NovaError


def infer(
    model: Path = typer.Option(..., "--model", "-m", help="Run directory, merged model directory, or base model."),
    adapter: Path | None = typer.Option(None, "--adapter", help="LoRA adapter directory to put on --model."),
    prompt: list[str] | None = typer.Option(None, "--prompt", "-p", help="A user message (repeatable)."),
    system: str | None = typer.Option(None, "--system", help="System message."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy decoding."),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0),
    as_json: JsonOpt = False,
) -> None:
    """Generate answers with the chat template; --json prints one JSON object per prompt."""
    from nova.console import quiet_libraries
    from nova.infer import Sampling, generate_chat, load_model

    quiet_libraries()
    if not prompt:
        raise NovaError("no prompt given", hint="pass --prompt TEXT")
    if not model.exists():
        raise NovaError(f"--model {model} does not exist")
    loaded = load_model(model, adapter=adapter)
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    for text in prompt:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        answer = generate_chat(loaded.model, loaded.tokenizer, messages, sampling)
        if as_json:
            typer.echo(json.dumps({"model": loaded.description, "prompt": text, "answer": answer}))
        else:
            typer.echo(f">>> {text}\n{answer}\n")
