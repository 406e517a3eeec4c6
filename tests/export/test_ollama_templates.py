"""Ollama TEMPLATEs from real chat templates (tests/fixtures/chat-templates), reasoning ones included.

Each template is set on the tiny fixture tokenizer; the derived Go template must render the sample
conversations exactly as the Jinja template does, with thinking on and, where the Jinja template
takes enable_thinking, with thinking off (Ollama's think: false). No template is named: what each
one needs is read off its own renders.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT

# NOVA_CHAT_TEMPLATES=DIR adds the templates of another directory (ones kept outside the repo).
TEMPLATES = sorted((ROOT / "tests" / "fixtures" / "chat-templates").glob("*.jinja")) + sorted(
    Path(os.environ["NOVA_CHAT_TEMPLATES"]).glob("*.jinja") if os.environ.get("NOVA_CHAT_TEMPLATES") else [])


@pytest.fixture(scope="module")
def tiny_tok(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def _swapped(tok: Any, path: Path) -> Any:
    out = copy.deepcopy(tok)
    out.chat_template = path.read_text(encoding="utf-8")
    return out


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.stem)
def test_every_real_template_gives_a_checked_ollama_template(tiny_tok: Any, template: Path) -> None:
    from nova.errors import NovaError
    from nova.export.gotemplate import render
    from nova.export.ollama import check_template, derive_chat_format, go_messages, go_template

    tok = _swapped(tiny_tok, template)
    try:
        tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    except Exception:  # the template needs more than a chat (tool_use variants want tools): a clear error
        with pytest.raises(NovaError, match="the chat template fails on a probe conversation"):
            derive_chat_format(tok)
        return
    fmt = derive_chat_format(tok)
    text = go_template(fmt)
    check_template(tok, text, system=fmt.has_system, implicit_bos=fmt.implicit_bos, fmt=fmt)
    question = [{"role": "user", "content": "Hi there!"}]
    values = go_messages(question)
    for think in (True, False):  # Ollama's think: true / false is the template's own switch, where it has one
        jinja = tok.apply_chat_template(question, tokenize=False, add_generation_prompt=True,
                                        **{fmt.switch: think})
        default = tok.apply_chat_template(question, tokenize=False, add_generation_prompt=True)
        expressed = fmt.think_on if think else fmt.think_off
        go = fmt.implicit_bos + render(text, {**values, "IsThinkSet": True, "Think": think})
        assert go == (jinja if expressed is not None else default)
        assert expressed is not None or jinja == default or any(f"think: {str(think).lower()}" in n for n in fmt.notes)
    earlier = [*question, {"role": "assistant", "content": "<think>\nPROBE\n</think>\n\nHello."},
               {"role": "user", "content": "Thanks."}]
    cuts = "PROBE" not in tok.apply_chat_template(earlier, tokenize=False, add_generation_prompt=True)
    assert cuts == any("cuts <think> blocks" in note for note in fmt.notes)


def test_the_modelfile_says_what_the_template_cannot_express(tiny_model_dir: Path, tiny_tok: Any) -> None:
    from transformers import AutoConfig

    from nova.export.ollama import modelfile_text

    qwen3 = next(t for t in TEMPLATES if "enable_thinking" in t.read_text())
    text = modelfile_text(tiny_model_dir, _swapped(tiny_tok, qwen3), AutoConfig.from_pretrained(str(tiny_model_dir)))
    assert "{{ if and $.IsThinkSet (not $.Think) }}<|im_start|>assistant\n<think>\n\n</think>\n\n{{ else }}" in text
    assert "# think: false gives the template's enable_thinking=False generation prompt." in text
    assert "# Not expressed: The chat template cuts <think> blocks out of earlier replies" in text
    assert "# Not expressed: Tool definitions, tool calls and tool results are not in this TEMPLATE" in text
    assert all(line.isascii() for line in text.splitlines() if line.startswith("#"))
