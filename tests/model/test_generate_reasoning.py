"""Inference with reasoning templates: enable_thinking reaches the template, the think block is
split off the answer, hidden while streaming unless asked, and `nova infer` takes --think/--no-think
and --show-reasoning."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT
from nova.model.generate import Reply, generate_reply, opens_think, split_reply, text_streamer

QWEN3 = ROOT / "tests" / "fixtures" / "chat-templates" / "Qwen-Qwen3-0.6B.jinja"


@pytest.mark.parametrize(("text", "opened", "reasoning", "answer"), [
    ("<think>\nadd them\n</think>\n\n4", False, "add them", "4"),
    ("  <think>a</think>b", False, "a", "b"),
    ("plain answer", False, "", "plain answer"),
    ("still thinking when cut off", True, "still thinking when cut off", ""),
    ("r\n</think>\n\nA", True, "r", "A"),  # the prompt opened the block (DeepSeek-R1, QwQ)
    ("<think>never closed", False, "never closed", ""),
])
def test_split_reply(text: str, opened: bool, reasoning: str, answer: str) -> None:
    assert split_reply(text, opened) == Reply(text, reasoning, answer)


def test_opens_think() -> None:
    assert opens_think("<|im_start|>assistant\n<think>\n")
    assert not opens_think("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not opens_think("<|im_start|>assistant\n")


def _tok(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    qwen3 = copy.deepcopy(tok)
    qwen3.chat_template = QWEN3.read_text(encoding="utf-8")
    return qwen3


class _FakeModel:
    """Answers with fixed text and remembers the prompt it was given (no weights)."""

    device = "cpu"
    training = False

    def __init__(self, tok: Any, reply: str) -> None:
        self.tok, self.reply, self.prompts = tok, reply, []

    def eval(self) -> None:
        pass

    def generate(self, input_ids: Any, streamer: Any = None, **_: Any) -> Any:
        import torch

        self.prompts.append(self.tok.decode(input_ids[0]))
        new = self.tok(self.reply, add_special_tokens=False, return_tensors="pt").input_ids
        out = torch.cat([input_ids, new], dim=1)
        if streamer is not None:
            streamer.put(input_ids[0])
            for token in new[0]:
                streamer.put(token.reshape(1))
            streamer.end()
        return out


def test_enable_thinking_reaches_the_template_and_the_reply_is_split(tiny_model_dir: Path) -> None:
    tok = _tok(tiny_model_dir)
    model = _FakeModel(tok, "<think>\nsum the digits\n</think>\n\nIt is 6.")
    question = [{"role": "user", "content": "1 + 2 + 3?"}]
    reply = generate_reply(model, tok, question, think=False)
    assert model.prompts[-1].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert (reply.reasoning, reply.answer) == ("sum the digits", "It is 6.")
    generate_reply(model, tok, question)  # unset: the template's default (thinking on for Qwen3)
    assert model.prompts[-1].endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("show", [False, True])
def test_streaming_hides_the_think_block_unless_asked(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str],
                                                      show: bool) -> None:
    tok = _tok(tiny_model_dir)
    model = _FakeModel(tok, "<think>\nsum the digits\n</think>\n\nIt is 6.")
    reply = generate_reply(model, tok, [{"role": "user", "content": "q"}], streamer=text_streamer(tok, show))
    printed = capsys.readouterr().out
    assert "It is 6." in printed and reply.answer == "It is 6."
    assert ("sum the digits" in printed) is show and ("<think>" in printed) is show


def test_infer_command_takes_think_and_show_reasoning(tiny_model_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from nova.cli.main import app

    result = CliRunner().invoke(app, ["infer", "--model", str(tiny_model_dir), "--prompt", "hi", "--no-think",
                                      "--show-reasoning", "--max-new-tokens", "3", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output[result.output.index('{"prompt"'):].splitlines()[0])
    assert record["prompt"] == "hi" and isinstance(record["answer"], str)
