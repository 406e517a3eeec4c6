"""Every trained reply teaches the model to stop, also with templates that write no end-of-turn token.

The GLM-4.5 family's template (tests/fixtures/chat-templates/no-end-of-turn/, GLM-4.6's as llama.cpp
keeps it) ends a reply only where the next role marker begins, and writes nothing after the last
reply. nova trains that marker (``<|user|>``, or ``<|observation|>`` before a tool result) after every
reply, the last one included, and generation stops on it; where the marker is not a special token the
model could emit, ``nova data check`` refuses the stage in one line. A trained user turn trains its
content and end, not its role header.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

import data_fixtures
from conftest import ROOT, run_nova
from data_fixtures import data_cfg, trained_segments, write_jsonl
from nova.data import check_data, prepare_stage_data
from nova.errors import NovaError

tok = data_fixtures.tok
GLM = ROOT / "tests" / "fixtures" / "chat-templates" / "no-end-of-turn" / "zai-org-GLM-4.6.jinja"
GLM_SPECIALS = ["<|user|>", "<|assistant|>", "<|system|>", "<|observation|>", "[gMASK]", "<sop>"]
TWO_TURNS = {"messages": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4."},
                          {"role": "user", "content": "And 3 + 3?"}, {"role": "assistant", "content": "6."}]}


def glm_tokenizer(tokenizer: Any, specials: bool = True) -> Any:
    """The tiny tokenizer with GLM-4.6's template (and, as GLM's own tokenizer has, its role markers special)."""
    glm = copy.deepcopy(tokenizer)
    if specials:
        glm.add_special_tokens({"additional_special_tokens": GLM_SPECIALS})
    glm.chat_template = GLM.read_text(encoding="utf-8")
    glm.name_or_path = "GLM-4.6"
    return glm


def test_the_marker_that_ends_each_reply_is_trained(tok: Any, tmp_path: Path) -> None:
    glm = glm_tokenizer(tok)
    data = data_cfg(write_jsonl(tmp_path / "chats.jsonl", [TWO_TURNS]), tmp=tmp_path)
    row = prepare_stage_data(data, glm, method="sft", seed=0).train[0]
    assert trained_segments(glm, row["input_ids"], row["labels"]) == ["4.<|user|>", "6.<|user|>"]
    assert row["input_ids"][-1] == glm.convert_tokens_to_ids("<|user|>")  # appended after the last reply


def test_a_reply_before_a_tool_result_ends_with_the_observation_marker(tok: Any, tmp_path: Path) -> None:
    glm = glm_tokenizer(tok)
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    chat = {"messages": [{"role": "user", "content": "Weather in Paris?"},
                         {"role": "assistant", "content": "", "tool_calls": [call]},
                         {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                         {"role": "assistant", "content": "Sunny."}]}
    data = data_cfg(write_jsonl(tmp_path / "tools.jsonl", [chat]), tmp=tmp_path)
    row = prepare_stage_data(data, glm, method="sft", seed=0).train[0]
    segments = trained_segments(glm, row["input_ids"], row["labels"])
    assert segments[0].endswith("</tool_call><|observation|>") and segments[-1] == "Sunny.<|user|>"


def test_preference_replies_end_with_the_marker_too(tok: Any, tmp_path: Path) -> None:
    glm = glm_tokenizer(tok)
    pair = {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."}
    data = data_cfg(write_jsonl(tmp_path / "pairs.jsonl", [pair]), tmp=tmp_path)
    row = prepare_stage_data(data, glm, method="dpo", seed=0).train[0]
    ends = [glm.convert_tokens_to_ids("<|user|>"), glm.eos_token_id]  # the marker, then the eos DPO always adds
    assert row["chosen_ids"][-2:] == ends and row["rejected_ids"][-2:] == ends


def test_generation_stops_on_the_marker(tok: Any) -> None:
    from types import SimpleNamespace

    from nova.model.generate import stop_ids

    glm = glm_tokenizer(tok)
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=glm.eos_token_id))
    assert glm.convert_tokens_to_ids("<|user|>") in stop_ids(model, glm)
    assert stop_ids(model, tok) == [tok.eos_token_id]  # ChatML: <|im_end|> is eos already


def test_a_marker_the_model_cannot_emit_is_refused_in_one_line(tok: Any, tmp_path: Path, tiny_model_dir: Path) -> None:
    glm = glm_tokenizer(tok, specials=False)  # <|user|> is plain text here: no token to stop on
    data = data_cfg(write_jsonl(tmp_path / "chats.jsonl", [TWO_TURNS]), tmp=tmp_path)
    with pytest.raises(NovaError, match="cannot learn to stop") as caught:
        check_data(data, method="sft", tokenizer=glm)
    assert "GLM-4.6 writes nothing after the last reply" in str(caught.value)
    template = tmp_path / "glm.jinja"
    template.write_text(GLM.read_text(encoding="utf-8"))
    config = tmp_path / "glm.yaml"
    config.write_text(f"name: glm\nmodel: {{base: {tiny_model_dir}, chat_template: {template}}}\n"
                      f"data: {{datasets: [{{path: {tmp_path / 'chats.jsonl'}}}], eval_split: 0}}\n")
    result = run_nova("data", "check", "--config", str(config))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "cannot learn to stop" in result.stderr


def test_a_trained_user_turn_trains_its_content_not_its_role_header(tok: Any, tmp_path: Path) -> None:
    chat = {"messages": [{"role": "user", "content": "Tell me a fact.", "loss_weight": 1},
                         {"role": "assistant", "content": "Water boils at 100 C."}]}
    data = data_cfg(write_jsonl(tmp_path / "user.jsonl", [chat]), tmp=tmp_path)
    row = prepare_stage_data(data, tok, method="sft", seed=0).train[0]
    assert trained_segments(tok, row["input_ids"], row["labels"]) == [
        "Tell me a fact.<|im_end|>", "Water boils at 100 C.<|im_end|>"]
