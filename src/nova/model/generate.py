"""Generation with the chat template: what ``nova infer``, the smoke prompts and the demo answer with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nova.data.reasoning import CLOSE, OPEN
from nova.data.template import thinking_switch
from nova.errors import NovaError
from nova.lazy import require


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0

    def generate_kwargs(self, tokenizer: Any) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens,
                                  "pad_token_id": tokenizer.pad_token_id,
                                  "repetition_penalty": self.repetition_penalty}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
            if self.top_k:
                kwargs["top_k"] = self.top_k
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs


def _render(tokenizer: Any, messages: list[dict[str, str]], think: bool | None = None) -> tuple[Any, str]:
    """(input ids, prompt text). ``think`` is passed as ``enable_thinking`` (templates that do not
    take it ignore it); None leaves the template's default, as training does for records without it."""
    if not getattr(tokenizer, "chat_template", None):
        text = "\n".join(m["content"] for m in messages)
        return tokenizer(text, return_tensors="pt").input_ids, text
    # Under the name the template reads (enable_thinking; thinking for DeepSeek-V3.1), as training passes it.
    source = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    kwargs = {} if think is None else {thinking_switch(source): think}
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    return tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids, text


def opens_think(prompt: str) -> bool:
    """Whether the prompt ends inside a think block its template opened (DeepSeek-R1, QwQ)."""
    tail = prompt.rstrip()
    return tail.endswith(OPEN) and CLOSE not in tail[tail.rfind(OPEN):]


@dataclass(frozen=True)
class Reply:
    """A generated reply: its reasoning (the think block it opens with, '' when none) and its answer."""

    text: str
    reasoning: str
    answer: str


def split_reply(text: str, opened: bool = False) -> Reply:
    """Split generated text into reasoning and answer. ``opened``: the prompt already opened the think
    block, so the text starts inside it. An unclosed block (cut off by max_new_tokens) is all reasoning."""
    body = text.lstrip()
    if not opened and not body.startswith(OPEN):
        return Reply(text, "", text.strip())
    if body.startswith(OPEN):
        body = body[len(OPEN):]
    reasoning, closed, answer = body.partition(CLOSE)
    if not closed:
        return Reply(text, reasoning.strip(), "")
    return Reply(text, reasoning.strip(), answer.strip())


def text_streamer(tokenizer: Any, show_reasoning: bool = True) -> Any:
    """Print tokens as they are generated (the prompt itself is not echoed); without
    ``show_reasoning`` the think block is held back and only the answer is printed."""
    transformers = require("transformers")

    class ReplyStreamer(transformers.TextStreamer):  # type: ignore[misc, name-defined]
        def begin(self, opened: bool) -> None:
            self.hiding = not show_reasoning
            self.opened = opened
            self.held = ""

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if not getattr(self, "hiding", False):
                super().on_finalized_text(text, stream_end)
                return
            self.held += text
            body = self.held.lstrip()
            if not self.opened and body and not (body.startswith(OPEN) or OPEN.startswith(body)):
                self.hiding, self.held = False, ""  # no think block: print from here on
                super().on_finalized_text(body, stream_end)
            elif CLOSE in self.held:
                self.hiding = False
                super().on_finalized_text(self.held.split(CLOSE, 1)[1].lstrip(), stream_end)
            elif stream_end:
                super().on_finalized_text("", stream_end)

    return ReplyStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """What generation stops at: the model's eos ids, the tokenizer's eos, and the token that ends a reply
    with its chat template (for GLM-style templates the next turn's marker, which nova trains after replies)."""
    from nova.data.template import reply_end_ids

    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    found = [*(eos if isinstance(eos, list | tuple) else [eos]), tokenizer.eos_token_id, *reply_end_ids(tokenizer)]
    out: list[int] = []
    for i in found:
        if i is not None and int(i) not in out:
            out.append(int(i))
    return out


def context_length(model: Any) -> int | None:
    """The most positions the model was built for (config.json's max_position_embeddings), when it says."""
    config = getattr(model, "config", None)
    value = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def check_context(model: Any, prompt_tokens: int) -> None:
    """Refuse, at once, a prompt the model cannot read: one past its context would be minutes of work for an
    answer from positions it never saw."""
    limit = context_length(model)
    if limit is not None and prompt_tokens >= limit:
        raise NovaError(f"the prompt is {prompt_tokens} tokens long; the model's context is {limit} tokens "
                        "(max_position_embeddings in its config.json), with room needed for the answer",
                        hint=f"shorten the prompt (or the conversation) below {limit} tokens")


def generate_reply(model: Any, tokenizer: Any, messages: list[dict[str, str]], sampling: Sampling | None = None,
                   streamer: Any = None, think: bool | None = None) -> Reply:
    """Answer one conversation: the new text, split into reasoning and answer."""
    torch = require("torch")
    sampling = sampling or Sampling()
    input_ids, prompt = _render(tokenizer, messages, think)
    check_context(model, int(input_ids.shape[1]))
    input_ids = input_ids.to(model.device)
    opened = opens_think(prompt)
    if hasattr(streamer, "begin"):
        streamer.begin(opened)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer,
                             eos_token_id=stop_ids(model, tokenizer), **sampling.generate_kwargs(tokenizer))
    if was_training:
        model.train()
    return split_reply(tokenizer.decode(out[0, input_ids.shape[1]:], skip_special_tokens=True), opened)


def generate_chat(model: Any, tokenizer: Any, messages: list[dict[str, str]],
                  sampling: Sampling | None = None, streamer: Any = None, think: bool | None = None) -> str:
    """Answer one conversation; returns the assistant's new text (reasoning included)."""
    return generate_reply(model, tokenizer, messages, sampling, streamer, think).text.strip()


def generate_answers(model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int = 128,
                     sampling: Sampling | None = None, think: bool | None = None,
                     show_reasoning: bool = True, system: Sequence[dict[str, str]] = ()) -> list[str]:
    """Answers to single-turn prompts (the smoke prompts): with ``show_reasoning`` the whole reply,
    else only the answer after the think block. ``system``: the messages before each prompt (the run's
    system prompt, nova.data.system), so the model is asked as it was trained."""
    sampling = sampling or Sampling(max_new_tokens=max_new_tokens)
    replies = [generate_reply(model, tokenizer, [*system, {"role": "user", "content": p}], sampling, think=think)
               for p in prompts]
    return [r.text.strip() if show_reasoning else r.answer for r in replies]
