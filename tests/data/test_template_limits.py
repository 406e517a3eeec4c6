"""Chat templates that need what a record lacks say so (file:line, the fix); templates run bounded."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest

import data_fixtures
from data_fixtures import chat, data_cfg, write_jsonl
from nova.data import check_data, template_limits
from nova.errors import DataError

tok = data_fixtures.tok

TOOLS = ("{% for t in tools %}<tool>{{ t.name }}</tool>{% endfor %}"
         "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LOOPS = ("{% for a in range(100000) %}{% for b in range(100000) %}{{ a }}{% endfor %}{% endfor %}"
         "{% for m in messages %}{{ m.content }}{% endfor %}")
DOUBLING = ("{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
            "{% for m in messages %}{{ m.content }}{% endfor %}")


def _fail(tmp: Path, tokenizer: Any, template: str) -> str:
    path = write_jsonl(tmp / "chats.jsonl", [chat("hi", "hello")])
    with_template = copy.copy(tokenizer)
    with_template.chat_template = template
    with pytest.raises(DataError) as info:
        check_data(data_cfg(path), method="sft", tokenizer=with_template)
    return "\n".join(info.value.lines())


def test_a_tool_template_on_a_chat_without_tools_says_what_is_missing(tmp_path: Path, tok: Any) -> None:
    text = _fail(tmp_path, tok, TOOLS)
    assert f"{tmp_path / 'chats.jsonl'}:1: the chat template of" in text
    assert "needs tools (it reads 'tools') and this chat has none" in text
    assert "(add a 'tools' list (function schemas) to the record" in text


def test_a_template_that_never_ends_is_stopped(tmp_path: Path, tok: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(template_limits, "MAX_RENDER_S", 0.5)
    start = time.monotonic()
    text = _fail(tmp_path, tok, LOOPS)
    assert time.monotonic() - start < 30
    assert "ran longer than 0.5 s on one record: stopped" in text


def test_a_template_that_doubles_a_string_is_stopped(tmp_path: Path, tok: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(template_limits, "MAX_RENDER_CHARS", 1024 * 1024)
    text = _fail(tmp_path, tok, DOUBLING)
    assert "built a text longer than 1 Mi characters: stopped" in text


def test_the_limits_leave_real_templates_alone(tmp_path: Path, tok: Any) -> None:
    path = tmp_path / "ok.jsonl"
    path.write_text(json.dumps(chat("hi", "hello")) + "\n", encoding="utf-8")
    assert check_data(data_cfg(path), method="sft", tokenizer=tok).train_records == 1
