"""Every record format nova reads, in one table: its fields, what it trains, and how it is recognized.

The config schema's ``format:`` choices, ``nova data check --format/--method/--columns`` (help and
checks), the fields each format needs (tabular files are checked by their header) and the
detection of ``format: auto`` all come from ``FORMATS``. Each format gives one shape of training row
(``Records``, nova.methods.spec); a method reads the formats of its shape. How a record of each
format is normalized is ``nova.data.records`` (and ``unpaired``, ``prompts``).

This module imports nothing of nova's but the method registry's vocabulary, so the config schema
can read it (it sits in the config layer, tests/test_architecture.py).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from nova.methods.spec import Records

# A verdict on one reply (KTO): TRL's name, and LLaMA-Factory's (its dataset_info maps kto_tag to a column).
LABEL_FIELDS = ("label", "kto_tag")
# Fields any chat format may carry besides its own (passed to the chat template, or a reply's loss switch).
_CHAT_EXTRAS = ("system", "tools", "enable_thinking")


def _never(keys: Collection[str]) -> bool:
    return False


@dataclass(frozen=True)
class Format:
    """One record format: its name (``format:``), the rows it gives, its fields and how ``auto`` spots it."""

    name: str
    records: Records
    required: tuple[str, ...]  # every record (and a tabular file's header) must have these
    optional: tuple[str, ...] = ()  # further fields it reads
    detect: Callable[[Collection[str]], bool] = _never  # format: auto: does a record with these keys have it?
    templated: bool = True  # rendered through the chat template (all but plain text)
    summary: str = ""

    @property
    def fields(self) -> tuple[str, ...]:
        return (*self.required, *self.optional)


def _preference(keys: Collection[str]) -> bool:
    return bool({"chosen", "rejected", "chosen_messages", "rejected_messages"} & set(keys))


def _unpaired(keys: Collection[str]) -> bool:
    k = set(keys)
    return bool(set(LABEL_FIELDS) & k) and bool({"messages", "conversations"} & k or {"prompt", "completion"} <= k)


# In detection order: the most specific first (a preference record may also have a prompt; a labelled chat
# is feedback, not SFT).
FORMATS: tuple[Format, ...] = (
    Format("preference", "pairs", ("chosen", "rejected"), ("prompt", "chosen_messages", "rejected_messages",
                                                          "conversations", "system"), _preference,
           summary="prompt, chosen and rejected (or two conversations sharing their start)"),
    Format("unpaired", "feedback", (), ("prompt", "completion", "messages", "conversations", *LABEL_FIELDS,
                                        "system"), _unpaired,
           summary="a reply (prompt + completion, messages or conversations) and a label: true or false"),
    Format("messages", "sequences", ("messages",), _CHAT_EXTRAS, lambda k: "messages" in k,
           summary="OpenAI-style messages"),
    Format("sharegpt", "sequences", ("conversations",), _CHAT_EXTRAS, lambda k: "conversations" in k,
           summary="ShareGPT conversations (from/value)"),
    Format("prompt_completion", "sequences", ("prompt", "completion"), _CHAT_EXTRAS,
           lambda k: "prompt" in k and "completion" in k, summary="a prompt and the completion to learn"),
    Format("alpaca", "sequences", ("instruction", "output"), ("input", "history", *_CHAT_EXTRAS),
           lambda k: "instruction" in k and "output" in k, summary="instruction, input, output (and history)"),
    Format("text", "sequences", ("text",), (), lambda k: "text" in k, templated=False,
           summary="plain text, every token learned"),
    # Never detected: a grpo stage reads every record as a prompt (nova.data.prompts), any field beside it
    # passed to the rewards.
    Format("prompt", "prompts", ("prompt",), ("system",), summary="a prompt and the fields its rewards read"),
)
BY_NAME = {f.name: f for f in FORMATS}
FORMAT_NAMES: tuple[str, ...] = tuple(BY_NAME)
FORMAT_CHOICES: tuple[str, ...] = ("auto", *FORMAT_NAMES)
# The fields nova reads in any format (what ``columns:`` and ``--columns`` map a file's names onto), besides
# the fields a grpo stage passes to its rewards, which may have any name.
FIELDS: tuple[str, ...] = (*dict.fromkeys(name for f in FORMATS for name in f.fields), "loss_weight")
# Chat shapes that can carry a verdict: in a stage reading feedback, such a record without one is reported as
# feedback missing its label, not as a chat of the wrong kind.
FEEDBACK_SHAPES = ("messages", "sharegpt", "prompt_completion")
# What rows of each shape are, in a hint: what a stage needs, and what a file of that shape is.
NEEDS: dict[str, str] = {"sequences": "chats or text", "pairs": "prompt/chosen/rejected records",
                         "feedback": "replies with a label: true or false", "prompts": "prompt-only records"}
CALLED: dict[str, str] = {"sequences": "chats or text", "pairs": "preference data",
                          "feedback": "replies with a label (good/bad feedback)", "prompts": "prompt-only records"}


def detect_format(keys: Collection[str]) -> str | None:
    """The format a record's (or a header's) fields point to, most specific first; None when nothing fits."""
    return next((f.name for f in FORMATS if f.detect(keys)), None)


def formats_for(records: str) -> frozenset[str]:
    """The formats that give rows of this shape (the ones a method reading them accepts)."""
    return frozenset(f.name for f in FORMATS if f.records == records)


def records_of(fmt: str) -> Records:
    """The row shape a format gives."""
    return BY_NAME[fmt].records


def required_fields(fmt: str) -> tuple[str, ...]:
    return BY_NAME[fmt].required


# Other names files give nova's fields, for the --columns mapping ``nova data check`` guesses for a file whose
# fields it does not know (printed, applied only when given). Lower-case; matched case-insensitively.
ALIASES: dict[str, tuple[str, ...]] = {
    "prompt": ("question", "query", "input", "instruction", "user", "human", "q", "prompt_text", "problem"),
    "completion": ("answer", "response", "output", "reply", "assistant", "gpt", "a", "target", "solution"),
    "chosen": ("chosen_response", "response_j", "preferred", "better", "accepted", "good"),
    "rejected": ("rejected_response", "response_k", "dispreferred", "worse", "bad"),
    "messages": ("conversation", "chat", "dialog", "dialogue", "turns"),
    "text": ("content", "body", "document", "passage"),
}


def guess_columns(keys: Collection[str]) -> dict[str, str] | None:
    """A ``columns`` mapping (nova field -> the file's name) under which a record with these keys has a known
    format, from ALIASES; None when the keys already fit a format, or no mapping makes them fit."""
    if detect_format(keys) is not None:
        return None
    by_lower = {k.lower(): k for k in keys}
    mapping: dict[str, str] = {}
    for ours, names in ALIASES.items():
        if ours in keys:
            continue
        found = next((by_lower[n] for n in names if n in by_lower and by_lower[n] not in mapping.values()), None)
        if found is not None:
            mapping[ours] = found
    for fmt in FORMATS:  # the most specific format the mapping completes
        renamed = {next((o for o, t in mapping.items() if t == k), k) for k in keys}
        if fmt.detect(renamed):
            return {o: t for o, t in mapping.items() if o in fmt.fields}
    return None
