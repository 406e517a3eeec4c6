"""Which characters of a rendered chat carry loss: one sequence per chat, or one per turn.

A template that writes every turn the same way whatever follows it (prefix-consistent) gives
one sequence per chat: for a trained message i the span is
``[len(render(messages[:i], add_generation_prompt=True)), len(render(messages[:i+1])))``, which
includes the template's end-of-turn token; trailing whitespace after it is not trained.

A template that rewrites history (Qwen3, QwQ and DeepSeek-R1 drop the reasoning of earlier
replies; gpt-oss ends earlier replies with another token) has no single rendering in which
every reply looks as the model produced it. Each trained reply is then rendered as the final
turn of its own prefix, the way the model sees it at inference: the sequence is the generation
prompt for that turn (untrained) followed by the reply as the template writes a final reply
(trained). ``data.rewritten_turns: last`` keeps only the last reply's sequence.

Two things are never trained: an empty think block a template writes into a reply without
reasoning (``data.train_empty_think``; learning it teaches the model to skip thinking), and,
for templates that drop reasoning from even the final reply (REBUILT), the empty block nova
writes after the template's own think opener. A reply whose reasoning or tool call the
template does not write at all is a record problem: training on it would teach the wrong text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nova.data.reasoning import CLOSE, FIELD, OPEN, as_inline
from nova.data.records import RecordProblem
from nova.data.template import REBUILT, ChatTemplate, leading_special, think_opener

Span = tuple[int, int]


@dataclass(frozen=True)
class TurnSettings:
    """The data settings that decide the loss mask of chats."""

    rewritten_turns: str = "every"
    train_empty_think: bool = False
    # Characters past which truncation cuts every token (nova.data.encode's char_cap): turns that start there
    # are never trained, so their spans are not located (a chat of 20,000 turns costs what its first ones do).
    char_cap: int | None = None


@dataclass(slots=True)
class Sequence:
    """One training sequence: its text, the character spans that carry loss, and what it holds."""

    text: str
    spans: list[Span] = field(default_factory=list)
    reasoning: bool = False
    empty_think: int = 0  # empty think blocks left untrained


class _Rewritten(Exception):
    """The chat cannot be one sequence with this template (internal: the per-turn path follows)."""

    def __init__(self, problem: str = "") -> None:
        super().__init__(problem)
        self.problem = problem


def options(example: dict[str, Any]) -> dict[str, Any] | None:
    """The example's template options (``enable_thinking``, ``tools``), None when it has none. A chat
    whose replies reason is rendered in the template's thinking mode unless it says otherwise
    (DeepSeek-V3.1's default is the non-thinking one, whose prompt closes the think block)."""
    if len(example) == 3:  # kind, messages, train: a plain chat (most records)
        return None
    found = {k: example[k] for k in ("enable_thinking", "tools") if k in example}
    if "enable_thinking" not in found and example.get("reasoning"):
        found["enable_thinking"] = True
    return found or None


def chat_sequences(template: ChatTemplate, example: dict[str, Any],
                   settings: TurnSettings) -> tuple[list[Sequence], bool]:
    """(the example's sequences, whether it was rendered turn by turn); raises RecordProblem."""
    canonical = example["messages"]
    messages = template.template_messages(canonical)
    opts = options(example)
    try:
        return [_whole(template, canonical, messages, example["train"], opts, settings)], False
    except _Rewritten:
        pass
    turns = [i for i, t in enumerate(example["train"]) if t]
    other = next((i for i in turns if canonical[i]["role"] != "assistant"), None)
    if other is not None:
        raise RecordProblem("template_not_prefix_consistent", f"message {other} is a trained "
                            f"'{canonical[other]['role']}' message, but the chat template of {template.model_name} "
                            "renders earlier turns differently once later turns follow, so only assistant turns "
                            "can be trained", "set loss_weight 0 on it")
    if settings.rewritten_turns == "last":
        turns = turns[-1:]
    return [_final_turn(template, canonical, messages, i, opts, settings) for i in turns], True


def reply_texts(template: ChatTemplate, prompt: list[dict[str, Any]], reply: dict[str, Any]) -> tuple[str, str]:
    """(prompt text, reply text) of one reply after a prompt (DPO): the generation prompt the model
    is given and the reply as the template writes a final reply, whole (empty think block included,
    so prompt + reply is the template's own text), without trailing whitespace."""
    canonical = [*prompt, reply]
    seq = _final_turn(template, canonical, template.template_messages(canonical), len(prompt), None,
                      TurnSettings(train_empty_think=True))
    if not seq.spans:
        raise RecordProblem("empty_field", f"the chat template of {template.model_name} writes nothing for the reply")
    start, end = seq.spans[0]
    return seq.text[:start], seq.text[start:end]


def _whole(template: ChatTemplate, canonical: list[dict[str, Any]], messages: list[dict[str, Any]],
           train: list[bool], opts: dict[str, Any] | None, settings: TurnSettings) -> Sequence:
    """The chat as one sequence; _Rewritten when the template rewrites earlier turns."""
    behaviour = template.behaviour
    if behaviour.reasoning == REBUILT and any(FIELD in m for m, t in zip(canonical, train, strict=True) if t):
        raise _Rewritten()
    full = template.render(messages, options=opts)
    marked = _marked(template, messages, opts, full) if behaviour.marks else None
    seq = Sequence(full)
    cap = settings.char_cap
    located = 0  # the end of the last turn located: every later turn starts at or after it
    for i, trained in enumerate(train):
        if not trained:
            continue
        if cap is not None and located >= cap:
            break
        prefix = template.render(messages[:i], generation=messages[i]["role"] == "assistant", options=opts)
        upto = full if i == len(messages) - 1 else template.render(messages[: i + 1], options=opts)
        if not (full.startswith(upto) and upto.startswith(prefix)):
            raise _Rewritten()
        located = len(upto)
        if marked and i in marked:
            _add_reply(seq, *marked[i], canonical[i], behaviour.empty_think, settings, on_problem=_Rewritten,
                       stop=(behaviour.stop, template.specials))
        elif messages[i]["role"] == "assistant":
            _add_reply(seq, len(prefix), len(upto), canonical[i], behaviour.empty_think, settings,
                       on_problem=_Rewritten, stop=(behaviour.stop, template.specials))
        else:
            _add_reply(seq, _content_start(upto, len(prefix), messages[i]), len(upto), canonical[i], "", settings,
                       on_problem=_Rewritten)
    return seq


def _content_start(text: str, start: int, message: dict[str, Any]) -> int:
    """Where a trained non-assistant turn's content starts: its role header is not trained (as in TRL and
    axolotl), its content and the end of its turn are. The header's start when the content is not found."""
    content = message.get("content")
    at = text.find(content, start) if isinstance(content, str) and content.strip() else -1
    return at if at >= 0 else start


def _final_turn(template: ChatTemplate, canonical: list[dict[str, Any]], messages: list[dict[str, Any]], i: int,
                opts: dict[str, Any] | None, settings: TurnSettings) -> Sequence:
    """Reply i as the final turn of its own prefix: the generation prompt, then the reply."""
    prompt = template.render(messages[:i], generation=True, options=opts)
    full = template.render(messages[: i + 1], options=opts)
    turn, opener = _locate(prompt, full, messages[i - 1].get("content") if i else None,
                           lambda: template.render(messages[:i], options=opts))
    message = canonical[i]
    if turn is None:
        raise RecordProblem("template_not_prefix_consistent", f"the chat template of {template.model_name} writes "
                            f"assistant turn {i} in a way that does not continue its own generation prompt, so the "
                            "trained tokens cannot be located", "use a model.chat_template whose final turn "
                            "continues its generation prompt")
    if FIELD in message and prompt.rstrip().endswith(CLOSE):
        raise RecordProblem("template_cannot_express", f"the generation prompt of the chat template of "
                            f"{template.model_name} closes the think block, so the reasoning of reply {i} cannot "
                            "follow it", "set enable_thinking: true on the record or its source")
    # The final turn lacks the think block the prompt opens (DeepSeek-R1 always, QwQ for plain replies), or
    # drops the reasoning: nova writes the reasoning (or an empty block) in its inline form after the prompt.
    rebuild = bool(opener) or (template.behaviour.reasoning == REBUILT and FIELD in message)
    inserted, empty = _rebuilt(message.get(FIELD, ""), opener, turn) if rebuild else ("", 0)
    seq = Sequence(prompt + inserted + turn)
    start, end = len(prompt), len(seq.text)
    if empty and not settings.train_empty_think:
        start += empty  # the empty block after the template's think opener
        seq.empty_think += 1
    elif not inserted and template.behaviour.marks and full.startswith(prompt):
        marked = _marked(template, messages[: i + 1], opts, full)
        start, end = marked[i] if marked and i in marked else (start, end)
    _add_reply(seq, start, end, message, template.behaviour.empty_think, settings, on_problem=None,
               model=template.model_name, stop=(template.behaviour.stop, template.specials))
    return seq


def _add_reply(seq: Sequence, start: int, end: int, message: dict[str, Any], empty_think: str,
               settings: TurnSettings, *, on_problem: type[_Rewritten] | None, model: str = "",
               stop: tuple[str, frozenset[str]] = ("", frozenset())) -> None:
    """Add the span of one reply, minus a leading empty think block and trailing whitespace; with ``stop``
    (a template that ends replies only where the next turn starts), plus the marker that ends it."""
    text = seq.text
    reasoning = FIELD in message
    if empty_think and not reasoning and not settings.train_empty_think and text.startswith(empty_think, start):
        start += len(empty_think)
        seq.empty_think += 1
    while end > start and text[end - 1].isspace():
        end -= 1  # a newline after <|im_end|> is formatting, not something to learn
    if stop[0]:
        end = _with_stop(seq, end, *stop)
        text = seq.text
    if (reasoning or "tool_calls" in message) and (problem := _missing(text[start:end], message)):
        if on_problem is not None:
            raise on_problem(problem)
        raise RecordProblem("template_cannot_express", f"the chat template of {model} {problem}",
                            "use a model.chat_template that writes it, or leave it out of the record")
    if end > start:
        seq.spans.append((start, end))
    if reasoning:
        seq.reasoning = True


def _with_stop(seq: Sequence, end: int, stop: str, specials: frozenset[str]) -> int:
    """The end of a reply including the marker that ends it: the next turn's marker where one follows
    (``<|user|>``, or ``<|observation|>`` before a tool result: the template's own text), else (the final
    reply) ``stop`` appended, the marker the model is to emit to end its turn."""
    tail = seq.text[end:]
    marker = leading_special(tail.lstrip(), specials)
    if marker:
        return end + len(tail) - len(tail.lstrip()) + len(marker)
    if not tail.strip():
        seq.text = seq.text[:end] + stop
        return len(seq.text)
    return end


def _missing(turn: str, message: dict[str, Any]) -> str:
    """What of the reply the rendered turn leaves out ('' when nothing is)."""
    if FIELD in message and message[FIELD] not in turn:
        return "drops the reasoning of this reply (it reads no reasoning field and no <think> block)"
    for call in message.get("tool_calls") or ():
        fn = call.get("function", call) if isinstance(call, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if isinstance(name, str) and name and name not in turn:
            return f"writes nothing of the tool call '{name}' in this reply"
    return ""


def _locate(prompt: str, full: str, anchor: Any, history: Callable[[], str]) -> tuple[str | None, str]:
    """(the final turn's text after the generation prompt, the end of the prompt that the final
    turn lacks: a think opener such as '<think>\n', or '').

    Usually the rendering continues the prompt. Where the template also rewrites the context
    (Mistral puts the system prompt into the last user message only; Hermes ends a tool result
    differently when it is last), the two are lined up after the last context message's text,
    else after the generation prompt itself (``history()`` is the context without it)."""
    if full.startswith(prompt):
        return full[len(prompt):], ""
    text = anchor.strip() if isinstance(anchor, str) else ""
    at = prompt.rfind(text) if text else -1
    if at >= 0:
        found = _after(full, text, prompt[at + len(text):])
        if found[0] is not None:
            return found
    context = history()
    if prompt.startswith(context) and len(prompt) > len(context):
        return _after(full, "", prompt[len(context):])
    return None, ""


def _after(full: str, text: str, tail: str) -> tuple[str | None, str]:
    """The text of ``full`` after the last ``text + tail``; or after ``text + tail`` without the think
    opener ``tail`` ends with, and that opener."""
    found = full.rfind(text + tail)
    if found >= 0:
        return full[found + len(text) + len(tail):], ""
    opener = think_opener(tail)
    head = tail[: len(tail) - len(opener)]
    found = full.rfind(text + head) if opener and text + head else -1
    if found < 0:
        return None, ""
    return full[found + len(text) + len(head):], opener


def _rebuilt(reasoning: str, opener: str, turn: str) -> tuple[str, int]:
    """(what nova writes between the prompt and the template's final turn: the reasoning in its inline
    form, continuing the template's think opener if any; how many characters from the prompt's end
    are an empty think block). A turn that starts by closing a think block itself (DeepSeek-V3.1
    writes '</think>' before every reply) gets the reasoning in front of that close."""
    closing = re.match(r"\s*" + re.escape(CLOSE) + r"\s*", turn)
    if closing:
        if reasoning:
            return ("" if opener else OPEN) + f"\n{reasoning}\n", 0
        return "", closing.end() if opener else 0
    body = as_inline(reasoning, "")
    if not opener:
        return (body, 0) if reasoning else ("", 0)
    rest = body[len(opener):] if body.startswith(opener) else body[len(OPEN):].lstrip()
    return rest, 0 if reasoning else len(rest)


def _marked(template: ChatTemplate, messages: list[dict[str, Any]], opts: dict[str, Any] | None,
            full: str) -> dict[int, Span] | None:
    """Assistant message index -> its {% generation %} span, when the marks pair up with the replies."""
    text, marks = template.render_marked(messages, opts)
    replies = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if text != full or len(marks) != len(replies):
        return None
    return dict(zip(replies, marks, strict=True))
