"""The system prompt chats are trained with: configured, the template's own default, or explicitly none.

A template that writes its own default system message into chats without one (SmolLM2's "named
SmolLM", Qwen2.5's "You are Qwen") is found by rendering; when the config did not choose it, the
data report says so with the count of chats that get it. ``data.default_system: none`` trains an
empty system turn instead; the serving side (nova.data.system.with_default) gives a chat template
that writes the run's prompt into a chat that brings none.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import data_fixtures
from conftest import ROOT
from data_fixtures import chat, data_cfg, write_jsonl
from nova.data import check_data, prepare_stage_data
from nova.data.preview import preview
from nova.data.system import CONFIG, EMPTY, SystemPrompt, template_default, tokenizer_system, with_default
from nova.data.template import ChatTemplate

tok = data_fixtures.tok
TEMPLATES = ROOT / "tests" / "fixtures" / "chat-templates"
ROWS = [chat("Who are you?", "I am Nova."), chat("Hi", "Hello.", system="Be brief."), chat("2+2?", "4")]


def _template(tokenizer: Any, name: str | None = None) -> ChatTemplate:
    swapped = copy.deepcopy(tokenizer)
    if name:
        swapped.chat_template = (TEMPLATES / name).read_text(encoding="utf-8")
    return ChatTemplate(swapped, name or "tiny")


def test_the_template_default_is_found_by_rendering(tok: Any) -> None:
    assert template_default(_template(tok)) == "You are a helpful assistant."  # the tiny ChatML, as SmolLM2's
    assert template_default(_template(tok, "Qwen-Qwen2.5-7B-Instruct.jinja")) == (
        "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.")
    for name in ("meta-llama-Llama-3.1-8B-Instruct.jinja", "Qwen-Qwen3-0.6B.jinja",
                 "mistralai-Mistral-Nemo-Instruct-2407.jinja", "google-gemma-2-2b-it.jinja"):
        assert template_default(_template(tok, name)) is None, name


def test_an_unchosen_default_is_reported_with_its_count(tok: Any, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "chats.jsonl", ROWS)
    notes = check_data(data_cfg(path), method="sft", tokenizer=tok).notes
    assert any("writes its own default system message into 2 of 3 chats" in n and
               '"You are a helpful assistant."' in n for n in notes), notes
    for chosen in ({"default_system": "keep"}, {"system_prompt": "You are Nova."}, {"default_system": "none"}):
        assert not any("system" in n for n in check_data(data_cfg(path, **chosen), method="sft", tokenizer=tok).notes)
    lines = preview(data_cfg(path), tok, method="sft", n=1)
    assert lines[1] == 'system prompt: "You are a helpful assistant." (the chat template\'s own default; not chosen ' \
                       "in the config)" and lines[2].startswith("note: system prompt: the chat template writes")


def test_none_trains_an_empty_system_turn(tok: Any, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "chats.jsonl", ROWS[:1])
    row = prepare_stage_data(data_cfg(path, tmp=tmp_path, default_system="none"), tok, method="sft", seed=0).train[0]
    text = tok.decode(row["input_ids"])
    assert text.startswith("<|im_start|>system\n<|im_end|>\n<|im_start|>user\nWho are you?") and "helpful" not in text
    assert tokenizer_system(data_cfg(path, default_system="none"), tok) == SystemPrompt(EMPTY, "")


def test_the_served_template_writes_the_run_prompt_into_a_chat_without_one(tok: Any) -> None:
    system = SystemPrompt(CONFIG, 'You are Nova, say "hi".')
    served = copy.deepcopy(tok)
    served.chat_template = with_default(tok.chat_template, system)
    user = [{"role": "user", "content": "Hi"}]
    own = [{"role": "system", "content": "Be brief."}, *user]
    assert served.apply_chat_template(user, tokenize=False, add_generation_prompt=True) == \
        tok.apply_chat_template([*system.messages(), *user], tokenize=False, add_generation_prompt=True)
    assert served.apply_chat_template(own, tokenize=False) == tok.apply_chat_template(own, tokenize=False)
    assert with_default(tok.chat_template, SystemPrompt("template", "You are a helpful assistant.")) == \
        tok.chat_template  # the template writes its own default itself
