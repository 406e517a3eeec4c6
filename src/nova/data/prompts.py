"""Prompt-only records (GRPO): a prompt to answer, and the fields its rewards check the answer against.

A record is ``prompt`` (a string, one message, or a list of messages ending with a user turn) plus
any other fields, e.g. ``{"prompt": "What is 17 + 25?", "answer": "42"}``. It is read into
``{"kind": "prompt", "prompt": [...], "fields": {...}}``: the fields are passed to every reward as
keyword arguments, one value per completion (TRL 1.x), so a field a reward needs must be in every
record; a record without it is a problem at its file:line, never a reward that fails mid-run.

Tokenization (nova.data.encode) renders the prompt with the chat template's generation prompt (as the model sees it
when it answers) and keeps its end when it is longer than ``grpo.max_prompt_length`` (counted).
The encoded row carries ``prompt_ids`` and ``record``, the prompt messages and fields as JSON (their
types as written: an answer 42 stays a number), which the GRPO trainer hands to the rewards.
"""

from __future__ import annotations

from typing import Any

from nova.data.records import RecordProblem, as_messages, check_order, with_system
from nova.methods.grpo import RESERVED_FIELDS

FORMAT = "prompt"


def normalize_prompt(record: dict[str, Any], system_prompt: str | None, fields: tuple[str, ...]) -> dict[str, Any]:
    """The normalized prompt example of one record (raises RecordProblem)."""
    if record.get("prompt") is None:
        raise RecordProblem("missing_field", "missing field 'prompt'", "a grpo stage reads prompt-only records: "
                            "prompt (a string or messages) plus the fields its rewards read")
    prompt = as_messages(record["prompt"], "prompt", "user")
    for m in prompt:
        m.pop("_train", None)
    prompt = with_system(prompt, system_prompt)
    check_order(prompt)
    if prompt[-1]["role"] != "user":
        raise RecordProblem("roles_out_of_order", f"the prompt ends with a '{prompt[-1]['role']}' turn",
                            "a grpo prompt ends with the user turn the model answers")
    for name in fields:
        if record.get(name) is None:
            raise RecordProblem("missing_field", f"missing field '{name}'", "a reward in grpo.rewards reads it: "
                                "add it to every record, or map a column to it with columns:")
    kept = {k: v for k, v in record.items() if k not in RESERVED_FIELDS}  # TRL passes those names itself
    return {"kind": "prompt", "prompt": [{"role": m["role"], "content": m["content"]} for m in prompt],
            "fields": kept}
