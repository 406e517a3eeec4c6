"""A task file any user can write: JSONL, one item per line, in one of three shapes.

- ``{"prompt": ..., "answer": ...}``: the model answers greedily; ``match`` says how the reply is
  judged: ``exact`` (default: equal after normalisation: case, spaces, punctuation at the ends),
  ``contains`` (the normalised answer appears in the normalised reply), ``regex`` (the answer is a
  regular expression searched in the reply) or ``number`` (the last number of the reply equals the
  answer, commas and ``$`` removed). ``max_new_tokens`` (default 64) bounds the reply.
- ``{"prompt": ..., "choices": [...], "answer": i}``: multiple choice, each choice scored as the
  assistant's reply by log-likelihood per character (lm-evaluation-harness' acc_norm); the most
  likely is the model's choice.
- ``{"prompt": ..., "chosen": ..., "rejected": ...}``: a preference pair; right when the model
  gives the chosen reply the higher log-likelihood (what DPO's implicit reward ranks by).

Every item may carry ``system`` (else the run's system prompt is used) and ``id``. Read and
checked whole before any model loads; every bad line is one problem naming file:line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nova.errors import DataError, NovaError, Problem

MAX_TASK_BYTES = 64 * 1024 * 1024
MAX_PROBLEMS = 50
MATCHES = ("exact", "contains", "regex", "number")
DEFAULT_NEW_TOKENS = 64
MAX_NEW_TOKENS = 4096


@dataclass(frozen=True)
class Item:
    """One scored item of a file task."""

    prompt: str
    system: str | None = None
    answer: str | None = None  # generate: the expected answer
    match: str = "exact"
    max_new_tokens: int = DEFAULT_NEW_TOKENS
    choices: tuple[str, ...] = ()  # choice: the options, ``gold`` the right one
    gold: int = -1
    chosen: str | None = None  # preference: the better and the worse reply
    rejected: str | None = None

    @property
    def kind(self) -> str:
        return "choice" if self.choices else ("preference" if self.chosen is not None else "generate")


def read_items(path: Path) -> list[Item]:
    """Every item of a task file, or a DataError listing each bad line (file:line: reason)."""
    if not path.is_file():
        raise NovaError(f"task file {path} does not exist" if not path.exists() else f"task {path} is not a file",
                        hint="pass a .jsonl file of items (docs/eval.md), or a shipped task name")
    if path.stat().st_size > MAX_TASK_BYTES:
        raise NovaError(f"task file {path} is larger than {MAX_TASK_BYTES // 2**20} MiB", hint="use a subset")
    items: list[Item] = []
    problems: list[Problem] = []
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                items.append(_item(raw.removeprefix(b"\xef\xbb\xbf") if number == 1 else raw))
            except ValueError as exc:
                problems.append(Problem(f"{path}:{number}", str(exc)))
                if len(problems) >= MAX_PROBLEMS:
                    break
    if problems:
        raise DataError(f"bad task file {path}", problems)
    if not items:
        raise DataError(f"bad task file {path}", [Problem(str(path), "no items in the file")])
    kinds = sorted({i.kind for i in items})
    if len(kinds) > 1:
        raise DataError(f"bad task file {path}", [Problem(str(path), f"items of several kinds ({', '.join(kinds)})",
                                                          "one task file holds one kind of item; split it")])
    return items


def _text(record: dict[str, Any], key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f'"{key}" must be non-empty text')
    return value


def _item(raw: bytes) -> Item:
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8: byte 0x{raw[exc.start]:02x} at column {exc.start + 1}") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"invalid JSON ({getattr(exc, 'msg', 'nested too deeply')})") from None
    if not isinstance(record, dict):
        raise ValueError("a line must be a JSON object")
    prompt = _text(record, "prompt")
    system = record.get("system")
    if system is not None and not isinstance(system, str):
        raise ValueError('"system" must be text')
    if "choices" in record:
        return _choice(record, prompt, system)
    if "chosen" in record or "rejected" in record:
        return Item(prompt, system, chosen=_text(record, "chosen"), rejected=_text(record, "rejected"))
    return _generate(record, prompt, system)


def _choice(record: dict[str, Any], prompt: str, system: str | None) -> Item:
    choices = record["choices"]
    if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) and c for c in choices)):
        raise ValueError('"choices" must be a list of at least two non-empty texts')
    gold = record.get("answer")
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise ValueError(f'"answer" must be the index of the right choice (0 to {len(choices) - 1})')
    return Item(prompt, system, choices=tuple(choices), gold=gold)


def _generate(record: dict[str, Any], prompt: str, system: str | None) -> Item:
    answer = record.get("answer")
    if isinstance(answer, int | float) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError('"answer" must be non-empty text (or give "choices", or "chosen" and "rejected")')
    match = record.get("match", "exact")
    if match not in MATCHES:
        raise ValueError(f'"match" must be one of {", ".join(MATCHES)}')
    if match == "regex":
        try:
            re.compile(answer)
        except re.error as exc:
            raise ValueError(f'"answer" is not a valid regular expression: {exc}') from None
    tokens = record.get("max_new_tokens", DEFAULT_NEW_TOKENS)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= MAX_NEW_TOKENS:
        raise ValueError(f'"max_new_tokens" must be a whole number from 1 to {MAX_NEW_TOKENS}')
    return Item(prompt, system, answer=answer, match=match, max_new_tokens=tokens)


_SPACES = re.compile(r"\s+")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_EDGE = " \t\n.,;:!?\"'`()[]{}*"


def normalise(text: str) -> str:
    """Case folded, whitespace collapsed, punctuation and quotes stripped at the ends."""
    return _SPACES.sub(" ", text.casefold()).strip(_EDGE)


def last_number(text: str) -> str | None:
    """The last number in ``text``, thousands separators removed and written canonically (1,250.00 -> 1250)."""
    found = _NUMBER.findall(text.replace("$", ""))
    if not found:
        return None
    value = float(found[-1].replace(",", ""))
    return str(int(value)) if value.is_integer() else repr(value)


def is_right(item: Item, reply: str) -> bool:
    """Whether a generated reply answers ``item`` (its ``match`` rule)."""
    assert item.answer is not None
    if item.match == "contains":
        return normalise(item.answer) in normalise(reply)
    if item.match == "regex":
        return re.search(item.answer, reply) is not None
    if item.match == "number":
        return last_number(reply) == last_number(item.answer)
    return normalise(reply) == normalise(item.answer)
