"""Unpaired feedback records (KTO): one reply, and whether it was good.

Thumbs-up/thumbs-down data comes in three shapes, all read here into one normalized example,
``{"kind": "unpaired", "prompt": [...], "completion": msg, "label": bool}``:

- TRL's unpaired form: ``prompt`` + ``completion`` + ``label``;
- a chat with a verdict on its last reply: ``messages`` (or ShareGPT ``conversations``) + ``label``;
- LLaMA-Factory's form, where the verdict column is ``kto_tag`` (its ``dataset_info.json`` maps
  ``kto_tag`` to the column; nova reads a ``kto_tag`` field the same way as ``label``).

The reply that is judged is the last assistant message; everything before it is the prompt
(context, never trained). A label must be a real yes/no: ``true``/``false`` (or 1/0, also as the
text of a CSV cell); anything else is a record problem, because guessing would train the model toward
replies users rejected.
"""

from __future__ import annotations

from typing import Any

from nova.data.formats import LABEL_FIELDS
from nova.data.records import (
    RecordProblem,
    as_messages,
    check_order,
    field_text,
    read_messages,
    read_reasoning,
    with_system,
)


def normalize_unpaired(record: dict[str, Any], system_prompt: str | None) -> dict[str, Any]:
    """The normalized unpaired example of one record (raises RecordProblem)."""
    label = _label(record)
    if "prompt" in record and "completion" in record:
        prompt = as_messages(_present(record, "prompt"), "prompt", "user")
        messages = [*prompt, *as_messages(_present(record, "completion"), "completion", "assistant")]
    elif "messages" in record:
        messages = read_messages(_present(record, "messages"), "messages", sharegpt=False)
    elif "conversations" in record:
        messages = read_messages(_present(record, "conversations"), "conversations", sharegpt=True)
        if record.get("system") and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": field_text(record["system"], "system")})
    else:
        raise RecordProblem("missing_field", "no reply to judge", "give prompt + completion, messages or "
                            "conversations beside the label")
    for m in messages:
        m.pop("_train", None)
    if messages[-1]["role"] != "assistant":
        raise RecordProblem("roles_out_of_order", f"the record ends with a '{messages[-1]['role']}' turn",
                            "the last message should be the assistant reply that the label judges")
    prompt, completion = with_system(messages[:-1], system_prompt), messages[-1]
    if not prompt:
        raise RecordProblem("empty_field", "there is no prompt before the reply", "give the user turn it answers")
    check_order([*prompt, completion])
    read_reasoning([*prompt, completion], None)
    return {"kind": "unpaired", "prompt": prompt, "completion": completion, "label": label}


_WORDS = {"true": True, "false": False, "1": True, "0": False}


def _present(record: dict[str, Any], name: str) -> Any:
    if record.get(name) is None:
        raise RecordProblem("missing_field", f"missing field '{name}'")
    return record[name]


def _label(record: dict[str, Any]) -> bool:
    """The verdict: true (desirable) or false (undesirable); 1 and 0, and those words in a CSV cell, are read
    as the same."""
    name = next((n for n in LABEL_FIELDS if n in record), LABEL_FIELDS[0])
    value = record.get(name)
    if value is None:
        raise RecordProblem("missing_field", f"missing field '{name}'", "unpaired feedback needs label: true "
                            "(a good reply) or false (a bad one)")
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _WORDS:  # a CSV cell
        return _WORDS[value.strip().lower()]
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    raise RecordProblem("bad_label", f"'{name}' is {shown}, expected true or false",
                        "label each reply true (desirable) or false (undesirable)")
