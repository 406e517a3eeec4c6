"""The run's system prompt: the one training rendered is the one the model is served with.

A chat without a system message gets, in this order of choice:
- ``data.system_prompt`` when set (nova adds it as the chat's system message);
- with ``data.default_system: none``, an empty system message (the template then writes an empty
  system turn instead of its own default text; no template can be told to write none at all);
- otherwise whatever the chat template writes by itself: SmolLM2's "You are a helpful AI
  assistant named SmolLM, trained by Hugging Face", Qwen2.5's "You are Qwen, created by Alibaba
  Cloud...", or nothing for templates without a default (Llama 3.1, Qwen3, Mistral).

That default is found by rendering, not by model name (``template_default``). When the config
did not choose (``default_system`` unset and no ``system_prompt``) and the template writes one,
the data report says so, with the count of chats that get it: a user teaching "I am Nova" should
know the template says "named SmolLM" in every one of those chats.

Serving (smoke prompts, ``nova infer``, the Ollama Modelfile's SYSTEM, the chat template inside a
merged model or GGUF) uses ``SystemPrompt.messages()`` or ``with_default`` so the model sees at
inference the system turn it saw in training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from nova.data.records import RecordProblem

_S, _Q = "NOVASYSTEMPROBE", "NOVAUSERPROBE"

CONFIG, TEMPLATE, EMPTY, ABSENT = "config", "template", "empty", "absent"


@dataclass(frozen=True)
class SystemPrompt:
    """What the model sees as the system turn of a chat that brings none."""

    source: str  # CONFIG (data.system_prompt), TEMPLATE (the template's default), EMPTY (default_system: none), ABSENT
    text: str | None  # the system text in the rendered chat (None: no system turn)
    chosen: bool = True  # the config chose it (False: the template's default, with default_system unset)

    def messages(self) -> list[dict[str, str]]:
        """The system message to put before a served chat without one ([] when the template adds its own)."""
        if self.source in (CONFIG, EMPTY):
            return [{"role": "system", "content": self.text or ""}]
        return []

    def describe(self) -> str:
        """One phrase for logs and cards."""
        if self.source == CONFIG:
            return f"{json.dumps(self.text)} (data.system_prompt)"
        if self.source == EMPTY:
            return "none: an empty system turn (data.default_system: none)"
        if self.source == TEMPLATE:
            how = "data.default_system: keep" if self.chosen else "not chosen in the config"
            return f"{json.dumps(self.text)} (the chat template's own default; {how})"
        return "none (the chat template writes no system turn by default)"

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "text": self.text, "chosen": self.chosen}

    @classmethod
    def from_dict(cls, data: Any) -> SystemPrompt | None:
        if not isinstance(data, dict) or data.get("source") not in (CONFIG, TEMPLATE, EMPTY, ABSENT):
            return None
        text = data.get("text")
        return cls(str(data["source"]), text if isinstance(text, str) else None, bool(data.get("chosen", True)))


def template_default(template: Any) -> str | None:
    """The system text ``template`` (a nova ChatTemplate) writes into a chat without a system message,
    or None when it writes none (or takes no system role, or folds it into a user turn)."""
    try:
        with_system = template.render([{"role": "system", "content": _S}, {"role": "user", "content": _Q}],
                                      generation=True)
        without = template.render([{"role": "user", "content": _Q}], generation=True)
    except RecordProblem:
        return None
    if with_system.count(_S) != 1:
        return None
    head, tail = with_system.split(_S)
    if not (without.startswith(head) and without.endswith(tail) and len(without) >= len(head) + len(tail)):
        return None
    text = without[len(head): len(without) - len(tail)]
    return text if text.strip() else None


def served_system(data_cfg: Any, template: Any | None) -> SystemPrompt:
    """The system prompt a stage with ``data_cfg`` trains with (``template``: a ChatTemplate, or None)."""
    if data_cfg.system_prompt:
        return SystemPrompt(CONFIG, data_cfg.system_prompt)
    if data_cfg.default_system == "none":
        return SystemPrompt(EMPTY, "")
    default = template_default(template) if template is not None else None
    if default is None:
        return SystemPrompt(ABSENT, None)
    return SystemPrompt(TEMPLATE, default, chosen=data_cfg.default_system == "keep")


def tokenizer_system(data_cfg: Any, tokenizer: Any) -> SystemPrompt:
    """``served_system`` with the template of ``tokenizer`` (the tokenizer a run trains with)."""
    from nova.data.template import ChatTemplate

    if not getattr(tokenizer, "chat_template", None):
        return served_system(data_cfg, None)
    name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
    return served_system(data_cfg, ChatTemplate(tokenizer, name))


def phase_system(stage_data: list[Any], tokenizer: Any) -> SystemPrompt:
    """The system prompt a phase serves with: its last stage's (each stage renders its own data section;
    the phase's adapter is what the last one left)."""
    return tokenizer_system(stage_data[-1], tokenizer)


def run_system(record: Any, tokenizer: Any) -> SystemPrompt:
    """The system prompt of a finished run (a nova.runs.RunRecord): as training recorded it, else (a run
    from before the record existed) as its config and chat template give it."""
    recorded = SystemPrompt.from_dict(record.resolved.get("system_prompt"))
    if recorded is not None:
        return recorded
    return phase_system([stage.data for stage in record.phase.stage_list], tokenizer)


def default_note(system: SystemPrompt, without_system: int, chats: int) -> str | None:
    """The data report's note when the template's default reaches chats the config did not choose it for."""
    if system.source != TEMPLATE or system.chosen or not without_system:
        return None
    return (f"system prompt: the chat template writes its own default system message into {without_system} of "
            f"{chats} chats (those without one): {json.dumps(system.text)}; training and serving use it. Choose: "
            "data.system_prompt to replace it, data.default_system: none for an empty one, or keep to silence this")


def chats_without_system(examples: list[Any]) -> tuple[int, int]:
    """(chats whose first message is not a system message, chats) among loaded examples (raw text is no chat)."""
    without = total = 0
    for ex in examples:
        example = getattr(ex, "example", ex)
        messages = example.get("messages", example.get("prompt"))
        if not isinstance(messages, list) or not messages:
            continue
        total += 1
        without += messages[0].get("role") != "system"
    return without, total


def with_default(source: str, system: SystemPrompt) -> str:
    """A Jinja chat template that renders a chat without a system message with the run's system prompt.

    For a merged model's tokenizer and a GGUF: llama.cpp, Ollama and transformers then serve the
    system turn the model was trained with even when the caller sends none. Only CONFIG and EMPTY
    need it (a template default is written by the template itself).
    """
    if system.source not in (CONFIG, EMPTY):
        return source
    content = json.dumps(system.text or "")  # a JSON string is a valid Jinja string literal
    prelude = ("{%- if not messages or messages[0]['role'] != 'system' -%}"
               "{%- set messages = [{'role': 'system', 'content': " + content + "}] + messages -%}"
               "{%- endif -%}")
    return prelude + source
