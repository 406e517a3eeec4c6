"""Turn one raw record of any supported shape into nova's normalized example.

Every format ends as one of three shapes (plain JSON-able dicts, so they travel through
Arrow and worker processes unchanged):

- ``{"kind": "chat", "messages": [...], "train": [bool, ...]}`` for SFT chats, plus, where they
  apply, ``"reasoning": True`` (a trained reply has reasoning, see nova.data.reasoning),
  ``"enable_thinking": bool`` and ``"tools": [...]`` (passed to the chat template),
- ``{"kind": "text", "text": str}`` for raw text,
- ``{"kind": "pref", "prompt": [...], "chosen": msg, "rejected": msg}`` for DPO, ORPO and SimPO,
- ``{"kind": "unpaired", "prompt": [...], "completion": msg, "label": bool}`` for KTO (read by
  nova.data.unpaired).
- ``{"kind": "prompt", "prompt": [...], "fields": {...}}`` for GRPO (read by nova.data.prompts).

A record that cannot be trained on raises ``RecordProblem`` with a reason slug (counted in
the report) and a message that says what is wrong in the record's own terms.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from nova.data import formats
from nova.data.reasoning import FIELD, ReasoningProblem, might_have_reasoning, split_reasoning

ROLES = ("system", "user", "assistant", "tool")
MAX_MESSAGES = 1000  # messages in one chat; nova.data.turns renders a prefix per trained turn (docs/data.md)
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "tool": "tool", "observation": "tool", "function": "tool",
                  "function_call": "assistant"}
# The roles each role may follow; None is the start of the chat.
_MAY_FOLLOW: dict[str, tuple[str | None, ...]] = {
    "system": (None,),
    "user": (None, "system", "assistant", "tool"),
    "assistant": ("user", "tool"),
    "tool": ("assistant", "tool"),
}


# What fixes a record, by reason, for the problems raised without a fix of their own: every data error
# says what would fix the data (skipping it is a choice, never the fix).
FIXES = {
    "invalid_json": "make the line one JSON object (JSON Lines: one record per line)",
    "not_an_object": 'make each record a JSON object, e.g. {"messages": [...]}',
    "missing_field": "add the field, or map the file's name for it with columns:",
    "empty_field": "fill it in or remove the record",
    "non_string_content": "write the content as text",
    "no_assistant_turn": "give at least one assistant message loss_weight 1",
    "not_utf8": "save the file as UTF-8",
}


class RecordProblem(Exception):
    """A record that cannot be used, with the reason it is counted under and what would fix it."""

    def __init__(self, reason: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.hint = hint or FIXES.get(reason)


def detect_format(record: dict[str, Any]) -> str | None:
    """The format a record's fields point to, most specific first; None when nothing fits (nova.data.formats)."""
    return formats.detect_format(record.keys())


def apply_columns(record: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    """Rename the file's fields to nova's (``columns`` maps nova name -> file name)."""
    if not columns:
        return record
    out = dict(record)
    for ours, theirs in columns.items():
        if theirs not in out:
            raise RecordProblem("missing_field", f"missing field '{theirs}' (mapped to '{ours}' by columns)")
        out[ours] = out.pop(theirs)
    return out


_MESSAGE_FIELDS = ("messages", "conversations", "prompt", "completion", "chosen", "rejected", "chosen_messages",
                   "rejected_messages")


def apply_roles(record: dict[str, Any], roles: dict[str, str]) -> dict[str, Any]:
    """Rename role values (``roles`` maps the file's value -> nova's role: ``chatgpt: assistant``) in the
    ``role``/``from`` of every message of the record, before it is read; the record is not changed in place."""
    if not roles:
        return record

    def message(m: Any) -> Any:
        if not isinstance(m, dict):
            return m
        return {k: roles.get(v, v) if k in ("role", "from") and isinstance(v, str) else v for k, v in m.items()}

    out = dict(record)
    for name in _MESSAGE_FIELDS:
        value = out.get(name)
        if isinstance(value, list):
            out[name] = [message(m) for m in value]
        elif isinstance(value, dict):
            out[name] = message(value)
    return out


def normalize(record: dict[str, Any], fmt: str, *, system_prompt: str | None = None,
              enable_thinking: bool | None = None) -> dict[str, Any]:
    """Normalize one record of a known format (raises RecordProblem). ``enable_thinking`` is the
    source's default; a record's own ``enable_thinking`` field wins."""
    if fmt != "preference":  # chosen and rejected have aliases: checked in _preference
        for name in formats.required_fields(fmt):
            _require(record, name)
    if fmt == "text":
        return {"kind": "text", "text": field_text(record["text"], "text")}
    if fmt == "preference":
        return _preference(record, system_prompt)
    if fmt == "messages":
        messages = read_messages(record["messages"], "messages", sharegpt=False)
    elif fmt == "sharegpt":
        messages = read_messages(record["conversations"], "conversations", sharegpt=True)
        if "system" in record and record["system"] and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": field_text(record["system"], "system")})
    elif fmt == "prompt_completion":
        # The prompt is context, also when it holds earlier assistant turns: only the completion is
        # learned (TRL's meaning of the format).
        prompt = [{**m, "_train": False} for m in as_messages(record["prompt"], "prompt", "user")]
        messages = [*prompt, *as_messages(record["completion"], "completion", "assistant")]
    else:
        messages = _alpaca(record)
    return _template_options(record, _chat(messages, system_prompt), enable_thinking)


def dedup_key(example: dict[str, Any]) -> str:
    """Content hash after whitespace normalization: the identity used by dedup, the leakage check
    and the holdout split (so it must be stable across runs: sha1, not hash())."""
    kind = example["kind"]
    if kind == "text":
        parts = [_squash(example["text"])]
    elif kind == "chat":
        parts = [f"{_message_key(m)}\x1e{int(t)}" for m, t in zip(example["messages"], example["train"],
                                                                     strict=True)]
        if "enable_thinking" in example or "tools" in example:  # they change what is rendered
            parts.append(json.dumps([example.get("enable_thinking"), example.get("tools")], sort_keys=True))
    elif kind == "prompt":  # GRPO: the prompt and the fields its rewards read
        fields = json.dumps(example["fields"], sort_keys=True, default=str)
        parts = [*map(_message_key, example["prompt"]), "\x1d", fields]
    elif kind == "unpaired":
        parts = [*map(_message_key, example["prompt"]), "\x1d", _message_key(example["completion"]), "\x1d",
                 str(example["label"])]
    else:
        parts = [*map(_message_key, example["prompt"]), "\x1d", _message_key(example["chosen"]), "\x1d",
                 _message_key(example["rejected"])]
    return hashlib.sha1(f"{kind}\x1f{chr(31).join(parts)}".encode()).hexdigest()


def _squash(text: str) -> str:
    return " ".join(text.split())


def _message_key(message: dict[str, Any]) -> str:
    key = f"{message['role']}\x1e{_squash(message['content'])}"
    if len(message) > 2:  # tool calls and other pass-through fields are rare: serialize them whole
        extra = {k: v for k, v in message.items() if k not in ("role", "content")}
        key += "\x1e" + json.dumps(extra, sort_keys=True, ensure_ascii=False)
    return key


def _require(record: dict[str, Any], name: str) -> Any:
    if name not in record or record[name] is None:
        raise RecordProblem("missing_field", f"missing field '{name}'")
    return record[name]


def field_text(value: Any, name: str, *, allow_empty: bool = False) -> str:
    """A string field, or a list of text parts joined (OpenAI and LLaMA-Factory v1 shapes)."""
    if isinstance(value, list):
        value = "".join(_part_text(part, name) for part in value)
    if not isinstance(value, str):
        raise RecordProblem("non_string_content",
                            f"'{name}' is {type(value).__name__}, expected a string or a list of text parts")
    if not allow_empty and not value.strip():
        raise RecordProblem("empty_field", f"'{name}' is empty")
    return value


def _part_text(part: Any, name: str) -> str:
    if isinstance(part, str):
        return part
    if isinstance(part, dict) and part.get("type", "text") == "text":
        text = part.get("text", part.get("value"))
        if isinstance(text, str):
            return text
    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
    raise RecordProblem("non_string_content", f"'{name}' has a content part of type '{kind}', expected text")


def _message(raw: Any, where: str, *, sharegpt: bool) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise RecordProblem("non_string_content", f"{where} is {type(raw).__name__}, expected an object")
    role_key = "from" if sharegpt and "from" in raw else "role"
    content_key = "value" if sharegpt and "value" in raw else "content"
    role = raw.get(role_key)
    if role is None:
        raise RecordProblem("missing_field", f"{where} has no '{role_key}'")
    mapped = SHAREGPT_ROLES.get(role) if sharegpt else (role if role in ROLES else None)
    if mapped is None:
        known = sorted(SHAREGPT_ROLES) if sharegpt else list(ROLES)
        raise RecordProblem("unknown_role", f"{where} has unknown role '{role}'", f"use one of {', '.join(known)}, "
                            f"or map it on the dataset: roles: {{{role}: assistant}}")
    has_calls = bool(raw.get("tool_calls"))
    if content_key not in raw and not has_calls:
        raise RecordProblem("missing_field", f"{where} has no '{content_key}'")
    content = raw.get(content_key)
    message: dict[str, Any] = {k: v for k, v in raw.items()
                               if k not in (role_key, content_key, "loss_weight", "from", "value")}
    message["role"] = mapped
    message["content"] = field_text("" if content is None else content, f"{where}.{content_key}",
                               allow_empty=has_calls or mapped in ("system", "tool"))
    if "loss_weight" in raw:
        weight = raw["loss_weight"]
        if not isinstance(weight, int | float) or weight not in (0, 1):
            raise RecordProblem("bad_loss_weight", f"{where}.loss_weight is {weight!r}, expected 0 or 1",
                                "labels can only mark a token as trained or not")
        message["_train"] = bool(weight)
    return message


def read_messages(value: Any, name: str, *, sharegpt: bool) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise RecordProblem("non_string_content", f"'{name}' is {type(value).__name__}, expected a list of messages")
    if not value:
        raise RecordProblem("empty_field", f"'{name}' is empty")
    if len(value) > MAX_MESSAGES:  # each trained turn renders its prefix: the cost grows with the square
        raise RecordProblem("too_complex", f"'{name}' has {len(value)} messages, more than {MAX_MESSAGES} in one chat",
                            f"split it into chats of at most {MAX_MESSAGES} messages (max_length keeps only the first "
                            "tokens of a chat anyway)")
    out = []
    for i, m in enumerate(value):
        plain = None if sharegpt else _plain_message(m)
        out.append(plain if plain is not None else _message(m, f"{name}[{i}]", sharegpt=sharegpt))
    return out


def _plain_message(raw: Any) -> dict[str, Any] | None:
    """The common message, exactly {"role": known role, "content": usable string}, read without
    the general path's checks (which would give the same result); None for anything else."""
    if type(raw) is not dict or len(raw) != 2:
        return None
    role = raw.get("role")
    content = raw.get("content")
    if type(role) is not str or role not in ROLES or type(content) is not str:
        return None
    if not content.strip() and role not in ("system", "tool"):
        return None  # empty: the general path reports it
    return {"role": role, "content": content}


def as_messages(value: Any, name: str, role: str) -> list[dict[str, Any]]:
    """A prompt or completion given as a string, one message object, or a list of messages."""
    if isinstance(value, dict):
        sharegpt = "from" in value
        return [_message(value, name, sharegpt=sharegpt)]
    if isinstance(value, list) and value and all(isinstance(m, dict) and ("role" in m or "from" in m)
                                                 for m in value):
        return read_messages(value, name, sharegpt=any("from" in m for m in value))
    return [{"role": role, "content": field_text(value, name)}]


def _alpaca(record: dict[str, Any]) -> list[dict[str, Any]]:
    """instruction + input (joined by a newline, as LLaMA-Factory does), optional system and history."""
    messages: list[dict[str, Any]] = []
    if record.get("system"):
        messages.append({"role": "system", "content": field_text(record["system"], "system")})
    history = record.get("history") or []
    if not isinstance(history, list):
        raise RecordProblem("non_string_content", "'history' must be a list of [user, assistant] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise RecordProblem("non_string_content", f"history[{i}] must be a [user, assistant] pair")
        messages += [{"role": "user", "content": field_text(pair[0], f"history[{i}][0]")},
                     {"role": "assistant", "content": field_text(pair[1], f"history[{i}][1]")}]
    instruction = field_text(record["instruction"], "instruction")
    extra = record.get("input")
    if extra is not None and not isinstance(extra, str):
        raise RecordProblem("non_string_content", f"'input' is {type(extra).__name__}, expected a string")
    user = f"{instruction}\n{extra}" if extra and extra.strip() else instruction
    messages += [{"role": "user", "content": user},
                 {"role": "assistant", "content": field_text(record["output"], "output")}]
    return messages


def with_system(messages: list[dict[str, Any]], system_prompt: str | None) -> list[dict[str, Any]]:
    """Put ``system_prompt`` first in a chat without a system message ('' adds an empty one: default_system none)."""
    if system_prompt is not None and messages and messages[0]["role"] != "system":
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


def check_order(messages: list[dict[str, Any]]) -> None:
    """System first if at all, then a user turn, then replies in a sensible order."""
    previous: str | None = None
    for i, message in enumerate(messages):
        role = message["role"]
        if previous not in _MAY_FOLLOW[role]:
            after = f"after '{previous}'" if previous else "as the first message"
            raise RecordProblem("roles_out_of_order", f"message {i} is '{role}' {after}",
                                "chats go [system], user, assistant, user, assistant, ...")
        previous = role


def _chat(messages: list[dict[str, Any]], system_prompt: str | None) -> dict[str, Any]:
    messages = with_system(messages, system_prompt)
    check_order(messages)
    if messages[-1]["role"] != "assistant":
        raise RecordProblem("roles_out_of_order", f"the chat ends with a '{messages[-1]['role']}' turn",
                            "the last message should be the assistant reply to learn")
    train = [bool(m.pop("_train", m["role"] == "assistant")) for m in messages]
    if not any(t for t, m in zip(train, messages, strict=True) if m["role"] == "assistant"):
        raise RecordProblem("no_assistant_turn", "every assistant message has loss_weight 0")
    example: dict[str, Any] = {"kind": "chat", "messages": messages, "train": train}
    if read_reasoning(messages, train):
        example["reasoning"] = True
    return example


def read_reasoning(messages: list[dict[str, Any]], train: list[bool] | None) -> bool:
    """Split every assistant reply's reasoning off its content; True when a trained reply has some."""
    found = False
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or not might_have_reasoning(m):
            continue
        try:
            has = split_reasoning(m, f"message {i}")
        except ReasoningProblem as exc:
            raise RecordProblem(exc.reason, exc.message, exc.hint) from None
        found = found or (has and (train is None or train[i]))
    return found


def _template_options(record: dict[str, Any], example: dict[str, Any], default_thinking: bool | None) -> dict[str, Any]:
    """``enable_thinking`` (the record's, else the source's) and ``tools``, for the chat template."""
    thinking = record.get("enable_thinking", default_thinking)
    if thinking is not None:
        if not isinstance(thinking, bool):
            raise RecordProblem("non_string_content", f"'enable_thinking' is {type(thinking).__name__}, expected "
                                "true or false", "write it as JSON true or false, without quotes")
        if not thinking and example.get("reasoning"):
            raise RecordProblem("bad_reasoning", "enable_thinking is false but a reply has reasoning",
                                "drop the reasoning or set enable_thinking: true")
        example["enable_thinking"] = thinking
    tools = record.get("tools")
    if tools is not None:
        if not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
            raise RecordProblem("non_string_content", "'tools' must be a list of tool (function) definitions")
        if tools:
            example["tools"] = tools
    return example


def _preference(record: dict[str, Any], system_prompt: str | None) -> dict[str, Any]:
    chosen_raw = record.get("chosen", record.get("chosen_messages"))
    rejected_raw = record.get("rejected", record.get("rejected_messages"))
    for name, value in (("chosen", chosen_raw), ("rejected", rejected_raw)):
        if value is None:
            raise RecordProblem("missing_field", f"missing field '{name}'", "preference data needs prompt, "
                                "chosen and rejected")
    chosen = as_messages(chosen_raw, "chosen", "assistant")
    rejected = as_messages(rejected_raw, "rejected", "assistant")
    for m in (*chosen, *rejected):
        m.pop("_train", None)
    prompt = _preference_prompt(record, chosen, rejected)
    chosen, rejected = chosen[-1:], rejected[-1:]
    for name, msgs in (("chosen", chosen), ("rejected", rejected)):
        if msgs[0]["role"] != "assistant":
            raise RecordProblem("roles_out_of_order", f"'{name}' is a '{msgs[0]['role']}' message, "
                                "expected the assistant reply")
    prompt = with_system(prompt, system_prompt)
    check_order([*prompt, chosen[0]])
    read_reasoning([*prompt, chosen[0]], None)
    read_reasoning(rejected, None)
    if _squash(_reply_text(chosen[0])) == _squash(_reply_text(rejected[0])):
        raise RecordProblem("chosen_equals_rejected", "chosen and rejected are identical",
                            "a pair with no difference teaches nothing")
    return {"kind": "pref", "prompt": prompt, "chosen": chosen[0], "rejected": rejected[0]}


def _reply_text(message: dict[str, Any]) -> str:
    return f"{message.get(FIELD, '')}\x1e{message['content']}"


def _preference_prompt(record: dict[str, Any], chosen: list[dict[str, Any]],
                       rejected: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The shared prompt: explicit (prompt / ShareGPT conversations) or the common prefix of
    chosen and rejected full conversations (TRL's implicit-prompt form)."""
    if "prompt" in record and record["prompt"] is not None:
        prompt = as_messages(record["prompt"], "prompt", "user")
    elif "conversations" in record:
        prompt = read_messages(record["conversations"], "conversations", sharegpt=True)
    elif len(chosen) > 1 or len(rejected) > 1:
        prompt = chosen[:-1]
        if [(m["role"], m["content"]) for m in prompt] != [(m["role"], m["content"]) for m in rejected[:-1]]:
            raise RecordProblem("missing_field", "no 'prompt', and chosen and rejected do not share their "
                                "conversation before the last reply")
    else:
        raise RecordProblem("missing_field", "missing field 'prompt'")
    if record.get("system") and (not prompt or prompt[0]["role"] != "system"):
        prompt.insert(0, {"role": "system", "content": field_text(record["system"], "system")})
    for m in prompt:
        m.pop("_train", None)
    if not prompt:
        raise RecordProblem("empty_field", "'prompt' is empty")
    return prompt
