"""``nova infer``: answer prompts with a tuned model (run directory, merged model, or base + adapter)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from nova.cli.options import JsonOpt, TrustRemoteCodeOpt
from nova.console import echo
from nova.errors import NovaError


def infer(
    model: Path = typer.Option(..., "--model", "-m", help="Run directory, merged model directory, or base model."),
    adapter: Path | None = typer.Option(None, "--adapter", help="LoRA adapter directory to put on --model."),
    prompt: list[str] | None = typer.Option(None, "--prompt", "-p", help="A user message (repeatable)."),
    prompts_file: Path | None = typer.Option(None, "--prompts-file", help="JSONL of {prompt} or {messages}."),
    out: Path | None = typer.Option(None, "--out", help="Write the JSONL answers here instead of stdout."),
    chat: bool = typer.Option(False, "--chat", help="Interactive multi-turn chat (Ctrl-C stops an answer; "
                              "Ctrl-D or /exit ends)."),
    compare: bool = typer.Option(False, "--compare", help="Also answer with the base (adapters off)."),
    compare_phases: bool = typer.Option(False, "--compare-phases", help="Answer with the base and with the "
                                        "model as each phase of the chain left it, side by side."),
    upto: str | None = typer.Option(None, "--upto", help="Compose the chain only up to this phase "
                                    "(e.g. --upto doica on Sora's run: Doica's model)."),
    evaluate: bool = typer.Option(False, "--eval", help="Holdout loss and perplexity of a run directory."),
    system: str | None = typer.Option(None, "--system", help="System message [default: a run's own system "
                                      "prompt, the one it was trained with; --system '' for an empty one]."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy decoding."),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0),
    top_k: int = typer.Option(0, "--top-k", min=0, help="0 = off."),
    repetition_penalty: float = typer.Option(1.0, "--repetition-penalty", min=0.5),
    stream: bool = typer.Option(True, "--stream/--no-stream", help="Print tokens as they come (text mode)."),
    think: bool | None = typer.Option(None, "--think/--no-think", help="Pass enable_thinking to the chat template "
                                      "(Qwen3: --no-think answers without reasoning); default: the template's own."),
    show_reasoning: bool = typer.Option(False, "--show-reasoning", help="Also print the reply's think block "
                                        "(hidden by default; JSON gets a 'reasoning' field)."),
    trust_remote_code: TrustRemoteCodeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Generate with the chat template, compare with the base, chat, or evaluate a run's holdout."""
    from nova.infer import eval_loss, load_model, read_prompts_file
    from nova.model.generate import Sampling

    if not model.exists():
        raise NovaError(f"--model {model} does not exist")
    if adapter is not None and not adapter.exists():
        raise NovaError(f"--adapter {adapter} does not exist")
    if not (prompt or prompts_file or chat or evaluate):
        raise NovaError("nothing to do", hint="pass --prompt TEXT, --prompts-file FILE, --chat or --eval")
    conversations = read_prompts_file(prompts_file) if prompts_file else []
    if compare and compare_phases:
        raise NovaError("give --compare or --compare-phases, not both", hint="--compare-phases includes the base")
    from nova.console import task
    from nova.runs.layout import is_run_dir
    from nova.runs.record import read_run

    if is_run_dir(model):
        read_run(model)  # a broken run directory is one error line, said before "loading ..."
    with task("loading the model", line=f"loading {model}" + (f" + {adapter}" if adapter else "")):
        loaded = load_model(model, adapter=adapter, trust_remote_code=trust_remote_code, upto=upto)
    if (compare or compare_phases) and not loaded.has_adapters:
        flag = "--compare" if compare else "--compare-phases"
        raise NovaError(f"{flag} needs adapters to switch off", hint="pass a run directory or --adapter")
    if evaluate:
        for row in eval_loss(loaded):
            typer.echo(json.dumps(row) if as_json else
                       f"stage {row['stage']} ({row['method']}): holdout loss {row['eval_loss']:.4f}, "
                       f"perplexity {row['perplexity']:.2f} over {row['tokens']} tokens")
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                        repetition_penalty=repetition_penalty)
    head = [{"role": "system", "content": system}] if system is not None else loaded.system_messages()
    if loaded.system is not None and system is None and not as_json:
        typer.echo(f"system prompt: {loaded.system.describe()}", err=True)
    conversations = [c if c[0]["role"] == "system" else [*head, *c] for c in conversations]
    conversations += [[*head, {"role": "user", "content": p}] for p in prompt or []]
    how = _How(sampling, think, show_reasoning, stream)
    if conversations:
        views = loaded.phase_views() if compare_phases else (
            [("base", loaded.base_view), ("tuned", None)] if compare else [(None, None)])
        _answer_all(loaded, conversations, how, views, as_json=as_json or bool(prompts_file), out=out)
    if chat:
        _chat(loaded, head, how)


@dataclass(frozen=True)
class _How:
    """How to answer: sampling, enable_thinking, whether the think block is shown, streaming."""

    sampling: Any
    think: bool | None
    show_reasoning: bool
    stream: bool

    def record(self, loaded: Any, messages: list[dict[str, str]], key: str = "answer") -> dict[str, str]:
        from nova.model.generate import generate_reply

        reply = generate_reply(loaded.model, loaded.tokenizer, messages, self.sampling, think=self.think)
        out = {key: reply.answer if reply.reasoning else reply.text.strip()}
        if self.show_reasoning and reply.reasoning:
            out[key.replace("answer", "reasoning")] = reply.reasoning
        return out


View = tuple[str | None, Any]  # (label, context factory; None: the model as loaded)


def _json_record(loaded: Any, messages: list[dict[str, str]], how: _How, views: list[View]) -> dict[str, Any]:
    """One JSON line: the answer, plus ``base_answer`` (--compare) or ``phases`` (--compare-phases)."""
    record: dict[str, Any] = {"prompt": messages[-1]["content"]}
    phases: dict[str, Any] = {}
    for label, view in views:
        if view is None:
            record.update(how.record(loaded, messages))
            continue
        with view():
            answer = how.record(loaded, messages, "base_answer" if label == "base" else "answer")
        if len(views) == 2:  # --compare: the base beside the tuned model
            record.update(answer)
        else:
            phases[str(label)] = answer.get("answer", answer.get("base_answer"))
    if phases:
        record["phases"] = phases
        record["answer"] = phases[views[-1][0] or ""]
    return record


def _answer_all(loaded: Any, conversations: list[list[dict[str, str]]], how: _How, views: list[View], *,
                as_json: bool, out: Path | None) -> None:
    sink = out.open("w", encoding="utf-8") if out else None
    try:
        for messages in conversations:
            if as_json:
                line = json.dumps(_json_record(loaded, messages, how, views), ensure_ascii=True)
                if sink:
                    sink.write(line + "\n")
                else:
                    typer.echo(line)
                continue
            echo(f">>> {messages[-1]['content']}")
            for label, view in views:
                if label is not None:
                    echo(f"--- {label}:")
                if view is None:
                    _say(loaded, messages, how)
                else:
                    with view():
                        _say(loaded, messages, how)
            echo("")
        if sink:
            echo(f"wrote {len(conversations)} answers to {out}")
    finally:
        if sink:
            sink.close()


def _say(loaded: Any, messages: list[dict[str, str]], how: _How, stream: bool | None = None) -> str:
    """Print one reply (the think block only with --show-reasoning); returns its answer."""
    from nova.model.generate import generate_reply, text_streamer

    if how.stream if stream is None else stream:
        streamer = text_streamer(loaded.tokenizer, show_reasoning=how.show_reasoning)
        return generate_reply(loaded.model, loaded.tokenizer, messages, how.sampling, streamer, how.think).answer
    reply = generate_reply(loaded.model, loaded.tokenizer, messages, how.sampling, think=how.think)
    typer.echo(reply.text.strip() if how.show_reasoning or not reply.reasoning else reply.answer)
    return reply.answer


def _chat(loaded: Any, head: list[dict[str, str]], how: _How) -> None:
    """A multi-turn chat. Ctrl-C stops the answer being written and returns to the prompt (the turn is left
    out of the conversation); Ctrl-D (end of input) or /exit leaves."""
    history = list(head)
    echo(f"chatting with {loaded.description}; Ctrl-C stops an answer, Ctrl-D or /exit leaves")
    while True:
        typer.echo("you> ", nl=False)
        try:
            line = sys.stdin.readline()
        except KeyboardInterrupt:
            typer.echo("")
            echo("(Ctrl-D or /exit leaves)")
            continue
        if not line or line.strip() == "/exit":
            if not line:
                typer.echo("")  # the shell prompt on a line of its own after Ctrl-D
            return
        if not line.strip():
            continue
        history.append({"role": "user", "content": line.rstrip("\n")})
        typer.echo("nova> ", nl=False)
        try:
            # The history keeps the answer only: templates drop earlier reasoning anyway (Qwen3, DeepSeek-R1).
            answer = _say(loaded, history, how, stream=True)
        except KeyboardInterrupt:
            history.pop()
            typer.echo("")
            echo("(stopped; this turn is left out of the conversation)")
            continue
        except NovaError as exc:  # a conversation past the model's context: said, and the chat goes on
            history.pop()
            typer.echo("")
            echo(f"({exc.message}; this turn is left out of the conversation; {exc.hint or 'try a shorter one'})")
            continue
        history.append({"role": "assistant", "content": answer})
