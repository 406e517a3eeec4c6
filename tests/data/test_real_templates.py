"""Loss masks with real chat templates: every template in tests/fixtures/chat-templates, on a
two-turn reasoning chat, a one-turn plain chat (each with and without a system prompt) and a
tool-call chat.

The tiny fixture tokenizer gets each template swapped in (other models' special tokens become
text, which is fine for masks). Nothing here names a template: what each one should do is
worked out from transformers' own rendering of it (the oracle), so a template added to the
directory is covered by the same checks:

- each trained reply is trained exactly once, as its reasoning and answer (in that order) plus
  the end-of-turn text the template writes after a reply, and nothing else: never user, system
  or tool text, never an empty think block of a reply without reasoning;
- the untrained text before a reply ends with the template's generation prompt, so the model
  learns each reply after the prompt it gets at inference;
- a chat that the template cannot render in one piece becomes one sequence per reply;
- a record error (one line, file:line, naming the template) only where transformers' own
  rendering fails or leaves out what the reply holds.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import pytest

import data_fixtures
from conftest import ROOT
from data_fixtures import data_cfg, write_jsonl
from nova.data import prepare_stage_data
from nova.errors import DataError

tok = data_fixtures.tok  # the shared tokenizer fixture

# NOVA_CHAT_TEMPLATES=DIR adds the templates of another directory (ones kept outside the repo).
TEMPLATES = sorted((ROOT / "tests" / "fixtures" / "chat-templates").glob("*.jinja")) + sorted(
    Path(os.environ["NOVA_CHAT_TEMPLATES"]).glob("*.jinja") if os.environ.get("NOVA_CHAT_TEMPLATES") else [])
SYSTEM = "Answer like a careful tutor."
U1, R1, A1 = "What is 17 times 3?", "Seventeen three times: 17 plus 17 is 34, plus 17 is 51.", "The product is 51."
U2, R2, A2 = "And 51 minus 9?", "Take 10 away to get 41, then add 1 back: 42.", "The difference is 42."
UP, AP = "Name the capital of France.", "Paris is the capital of France."
UT, TOOL_RESULT, AT = "What is the weather in Paris?", "sunny, 21 C", "It is sunny and 21 C in Paris."
CALL = {"id": "call12345", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string"}}, "required": ["city"]}}}]


def _reasoning_chat(system: bool) -> dict[str, Any]:
    head = [{"role": "system", "content": SYSTEM}] if system else []
    # Both shapes nova reads: a reasoning field, and a think block opening the content.
    return {"messages": [*head, {"role": "user", "content": U1},
                         {"role": "assistant", "reasoning_content": R1, "content": A1},
                         {"role": "user", "content": U2},
                         {"role": "assistant", "content": f"<think>\n{R2}\n</think>\n\n{A2}"}]}


def _plain_chat(system: bool) -> dict[str, Any]:
    head = [{"role": "system", "content": SYSTEM}] if system else []
    return {"messages": [*head, {"role": "user", "content": UP}, {"role": "assistant", "content": AP}]}


def _tool_chat() -> dict[str, Any]:
    return {"tools": TOOLS, "messages": [
        {"role": "user", "content": UT}, {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call12345", "content": TOOL_RESULT}, {"role": "assistant", "content": AT}]}


CHATS = {"reasoning-2-turns": _reasoning_chat(False), "reasoning-2-turns-system": _reasoning_chat(True),
         "plain-1-turn": _plain_chat(False), "plain-1-turn-system": _plain_chat(True), "tool-call": _tool_chat()}


def _with_template(tokenizer: Any, path: Path) -> Any:
    swapped = copy.deepcopy(tokenizer)
    swapped.chat_template = path.read_text(encoding="utf-8")
    swapped.name_or_path = path.stem
    return swapped


# ---- the oracle: transformers' own rendering ---------------------------------------------------
def _replies(record: dict[str, Any]) -> list[dict[str, Any]]:
    """(index, reasoning, answer, tool call name) of each assistant reply, as the oracle sees them."""
    out = []
    for i, m in enumerate(record["messages"]):
        if m["role"] != "assistant":
            continue
        content, reasoning = m["content"], m.get("reasoning_content", "")
        if content.startswith("<think>"):
            reasoning, content = content[len("<think>"):].split("</think>")
        calls = m.get("tool_calls") or []
        out.append({"index": i, "reasoning": reasoning.strip(), "answer": content.strip(),
                    "call": calls[0]["function"]["name"] if calls else None})
    return out


def _oracle_messages(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages as apply_chat_template takes them (reasoning as a field, as transformers expects)."""
    out = []
    for m in record["messages"]:
        m = dict(m)
        if m["role"] == "assistant" and m["content"].startswith("<think>"):
            reasoning, m["content"] = m["content"][len("<think>"):].split("</think>")
            m["content"], m["reasoning_content"] = m["content"].strip(), reasoning.strip()
        out.append(m)
    return out


def _render(tokenizer: Any, messages: list[dict[str, Any]], generation: bool = False, **kw: Any) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation, **kw)


def _renders(tokenizer: Any, record: dict[str, Any]) -> str | None:
    """None when the template renders the chat; else why not."""
    try:
        _render(tokenizer, _oracle_messages(record), tools=record.get("tools"))
    except Exception as exc:  # the template's raise_exception, or a Jinja error
        return str(exc)
    return None


def _prefix_consistent(tokenizer: Any, record: dict[str, Any]) -> bool:
    messages, tools = _oracle_messages(record), record.get("tools")
    full = _render(tokenizer, messages, tools=tools)
    for reply in _replies(record):
        i = reply["index"]
        upto = _render(tokenizer, messages[: i + 1], tools=tools)
        if not (full.startswith(upto) and upto.startswith(_render(tokenizer, messages[:i], True, tools=tools))):
            return False
    return True


def _keeps_reasoning(tokenizer: Any, record: dict[str, Any]) -> bool:
    """Whether the template's rendering of the whole chat shows every reply's reasoning (read from
    the field, or as a think block in the content): else each reply has to be a sequence of its own."""
    reasonings = [r["reasoning"] for r in _replies(record) if r["reasoning"]]
    field = _render(tokenizer, _oracle_messages(record), tools=record.get("tools"))
    inline = _render(tokenizer, [{**m, "content": f"<think>\n{m.pop('reasoning_content')}\n</think>\n\n{m['content']}"}
                                 if "reasoning_content" in m else m for m in _oracle_messages(record)],
                     tools=record.get("tools"))
    return all(r in field for r in reasonings) or all(r in inline for r in reasonings)


def _end_of_turn(tokenizer: Any, record: dict[str, Any], index: int, answer: str) -> str:
    """What the template writes after a reply's answer when the reply is final."""
    messages = [*_oracle_messages(record)[:index], {"role": "assistant", "content": answer}]
    text = _render(tokenizer, messages, tools=record.get("tools")).rstrip()
    return text[text.rindex(answer) + len(answer):]


def _writes(tokenizer: Any, record: dict[str, Any], reply: dict[str, Any]) -> int:
    """How often a tool-call reply's function name is written by the reply itself (not the tool list)."""
    messages, tools = _oracle_messages(record), record.get("tools")
    before = _render(tokenizer, messages[: reply["index"]], True, tools=tools).count(reply["call"])
    return _render(tokenizer, messages[: reply["index"] + 1], tools=tools).count(reply["call"]) - before


def _prompt_tail(tokenizer: Any, record: dict[str, Any], index: int) -> str:
    """The end of the generation prompt for reply ``index``: what follows the last context message."""
    messages = _oracle_messages(record)
    prompt = _render(tokenizer, messages[:index], True, tools=record.get("tools"))
    anchor = messages[index - 1]["content"].strip()
    return prompt[prompt.rindex(anchor) + len(anchor):]


def _without_think(text: str) -> str:
    """The text without a think opener or an empty think block at its end, nor trailing whitespace."""
    return re.sub(r"(<think>)?\s*(</think>\s*)?$", "", text).rstrip()


# ---- what nova trained ----------------------------------------------------------------------------
def _segments(tokenizer: Any, row: dict[str, Any]) -> list[tuple[str, str]]:
    """(untrained text before, trained text) of each run of trained tokens of a row."""
    ids, labels = row["input_ids"], row["labels"]
    out, start = [], None
    for k, label in enumerate([*labels, -100]):
        if label != -100 and start is None:
            start = k
        elif label == -100 and start is not None:
            out.append((tokenizer.decode(ids[:start]), tokenizer.decode(ids[start:k])))
            start = None
    return out


def _check_reply(tokenizer: Any, record: dict[str, Any], reply: dict[str, Any], before: str, trained: str) -> None:
    context = [m["content"] for m in record["messages"] if m["role"] != "assistant"]
    assert not [text for text in context if text in trained], "user, system or tool text was trained"
    if reply["reasoning"]:
        assert reply["reasoning"] in trained, "the reasoning was not trained"
        assert trained.index(reply["reasoning"]) < trained.rindex(reply["answer"] or reply["call"])
    else:
        assert "think>" not in trained, "an empty think block of a reply without reasoning was trained"
    if reply["call"]:
        assert reply["call"] in trained
        own = _render(tokenizer, _oracle_messages(record)[: reply["index"] + 1], tools=record.get("tools"))
        assert own.rstrip().endswith(trained.rstrip()), "a tool-call reply must be the end of its own rendering"
    else:
        end = _end_of_turn(tokenizer, record, reply["index"], reply["answer"])
        assert trained.rstrip().endswith(reply["answer"] + end), "the answer and its end-of-turn text"
    tail = _without_think(_prompt_tail(tokenizer, record, reply["index"]))
    assert _without_think(before).endswith(tail), "the reply must follow the generation prompt"


@pytest.mark.parametrize("chat", sorted(CHATS))
@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.stem)
def test_real_template_masks(tmp_path: Path, tok: Any, template: Path, chat: str) -> None:
    tokenizer, record = _with_template(tok, template), CHATS[chat]
    path = write_jsonl(tmp_path / "chat.jsonl", [record])
    replies = _replies(record)
    try:
        prepared = prepare_stage_data(data_cfg(path, tmp=tmp_path, max_length=65536), tokenizer, method="sft", seed=0)
    except DataError as exc:
        assert len(exc.problems) == 1
        problem = exc.problems[0].render()
        assert problem.startswith(f"{path}:1: ") and "\n" not in problem and "chat template" in problem
        why = _renders(tokenizer, record)
        dropped = why is None and [r["call"] for r in replies if r["call"] and _writes(tokenizer, record, r) == 0]
        assert why is not None or dropped, f"nova refused a chat the template can write: {problem}"
        assert not (why is None and _renders(tokenizer, _plain_chat(False)) is None and "reasoning" in chat)
        return
    rows = list(prepared.train)
    whole = _prefix_consistent(tokenizer, record) and _keeps_reasoning(tokenizer, record)
    assert len(rows) == (1 if whole else len(replies))
    pairs = [pair for row in rows for pair in _segments(tokenizer, row)]
    assert len(pairs) == len(replies), "each reply is trained once, in one piece"
    for reply, (before, trained) in zip(replies, pairs, strict=True):
        _check_reply(tokenizer, record, reply, before, trained)


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.stem)
def test_rewritten_turns_last_trains_only_the_last_reply(tmp_path: Path, tok: Any, template: Path) -> None:
    tokenizer, record = _with_template(tok, template), CHATS["reasoning-2-turns"]
    path = write_jsonl(tmp_path / "chat.jsonl", [record])
    if _renders(tokenizer, record) is not None:
        pytest.skip("the template cannot render this chat (test_real_template_masks checks the error)")
    prepared = prepare_stage_data(data_cfg(path, tmp=tmp_path, rewritten_turns="last", max_length=65536),
                                  tokenizer, method="sft", seed=0)
    rows = list(prepared.train)
    if _prefix_consistent(tokenizer, record) and _keeps_reasoning(tokenizer, record):
        assert len(rows) == 1 and len(_segments(tokenizer, rows[0])) == 2  # one sequence: nothing to choose
        return
    assert len(rows) == 1
    [(before, trained)] = _segments(tokenizer, rows[0])
    assert R2 in trained and A2 in trained and A1 in before and R1 not in trained
    assert prepared.report.per_turn_chats == 1 and prepared.report.per_turn_sequences == 1


def test_every_reasoning_template_kind_is_covered(tok: Any) -> None:
    """The fixture set holds templates of each kind the masks handle, so the checks above mean something."""
    from nova.data.template import INLINE, REBUILT, ChatTemplate

    kinds = {ChatTemplate(_with_template(tok, t), t.stem).behaviour.reasoning for t in TEMPLATES}
    assert {"reasoning_content", INLINE, REBUILT} <= kinds
    empty = [t.stem for t in TEMPLATES if ChatTemplate(_with_template(tok, t), t.stem).behaviour.empty_think]
    assert empty, "at least one template inserts an empty think block"
