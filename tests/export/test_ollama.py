"""Ollama export: the Modelfile, and a TEMPLATE checked against the Jinja chat template.

The TEMPLATE is checked by rendering the exact text written into the Modelfile with nova's
Go-template interpreter and comparing it with the Jinja chat template on sample conversations.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from export_support import LLAMA2_TEMPLATE, LLAMA3_TEMPLATE, MISTRAL_TEMPLATE, MISTRAL_V3_TEMPLATE, PHI3_TEMPLATE

from nova.errors import NovaError

# ---------------------------------------------------------------------------------------------
# Go template interpreter
# ---------------------------------------------------------------------------------------------


def test_go_template_interpreter() -> None:
    from nova.export.gotemplate import GoTemplateError, quote_literal, render

    msgs = {"Messages": [{"Role": "system", "Content": "S"}, {"Role": "user", "Content": "U"}], "System": "S"}
    text = ("{{- range $i, $_ := .Messages }}\n  {{- if and (eq $i 0) (ne .Role \"user\") }}[first {{ .Role }}]"
            "{{ else if eq .Role \"user\" }}[user {{ .Content }}]{{ else }}[other]{{ end }}\n{{- end }}"
            "{{ if $.System }}|{{ $.System }}{{ end }}{{ if not .Tools }}|no tools{{ end }}"
            "{{ if or .Nope (eq (len .Messages) 2) }}|two{{ end }}")
    assert render(text, msgs) == "[first system][user U]|S|no tools|two"
    assert render(quote_literal("a {{ b }} c"), {}) == "a {{ b }} c"
    with pytest.raises(GoTemplateError):
        render("{{ template \"x\" }}", {})
    with pytest.raises(GoTemplateError):
        render("{{ if .A }}never closed", {"A": True})
    with pytest.raises(GoTemplateError):
        render("{{ printf \"%s\" .A }}", {"A": "x"})


# ---------------------------------------------------------------------------------------------
# Ollama
# ---------------------------------------------------------------------------------------------


def _template_from_modelfile(text: str) -> str:
    start = text.index('TEMPLATE """') + len('TEMPLATE """')
    return text[start: text.index('"""', start)]


def _assert_template_matches(tok, template: str) -> None:
    from nova.export.gotemplate import render
    from nova.export.ollama import SAMPLE_CONVERSATIONS, go_messages

    for messages in SAMPLE_CONVERSATIONS:
        expected = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert render(template, go_messages(messages)) == expected


def test_ollama_export_chatml(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from nova.export.ollama import export_ollama

    out = tmp_path / "ollama"
    result = export_ollama(tiny_model_dir, out)
    assert result.path == out and result.size_bytes > 0
    names = {p.name for p in out.iterdir()}
    assert {"Modelfile", "model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    text = (out / "Modelfile").read_text()
    assert text.isascii()
    lines = text.splitlines()
    assert "FROM ." in lines
    assert 'PARAMETER stop "<|im_end|>"' in lines
    assert any(line.startswith("PARAMETER temperature ") for line in lines)
    assert "PARAMETER num_ctx 512" in lines
    template = _template_from_modelfile(text)
    assert "{{ range $i, $_ := .Messages }}" in template
    _assert_template_matches(AutoTokenizer.from_pretrained(str(tiny_model_dir)), template)

    with pytest.raises(NovaError, match="not empty"):
        export_ollama(tiny_model_dir, out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_force_replaces_only_an_earlier_export(tiny_model_dir: Path, tmp_path: Path) -> None:
    import json

    from nova.export.ollama import export_ollama

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(NovaError, match=r"not written by nova \(no nova_export.json\)") as err:
        export_ollama(tiny_model_dir, mine, force=True)
    assert str(mine) in str(err.value) and (mine / "notes.txt").read_text() == "mine"
    out = export_ollama(tiny_model_dir, tmp_path / "ollama").path
    info = json.loads((out / "nova_export.json").read_text())
    assert info["kind"] == "ollama" and not info["source"].startswith("/") and str(tmp_path) not in str(info)
    (out / "stale.txt").write_text("old")
    export_ollama(tiny_model_dir, out, force=True)  # an earlier export: replaced
    assert not (out / "stale.txt").exists() and (out / "Modelfile").is_file()


def test_ollama_export_with_gguf(tiny_model_dir: Path, tmp_path: Path) -> None:
    from nova.export.ollama import export_ollama

    out = export_ollama(tiny_model_dir, tmp_path / "ollama-q8", outtype="q8_0").path
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "README.md", "model-q8_0.gguf", "nova_export.json"]
    assert "FROM ./model-q8_0.gguf" in (out / "Modelfile").read_text().splitlines()


@pytest.mark.parametrize("template", [LLAMA3_TEMPLATE, PHI3_TEMPLATE, MISTRAL_V3_TEMPLATE],
                         ids=["llama3", "phi3", "mistral-v3"])
def test_ollama_template_other_formats(tiny_model_dir: Path, template: str) -> None:
    from transformers import AutoTokenizer

    from nova.export.ollama import check_template, derive_chat_format, go_template

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tok.chat_template = template
    text = go_template(derive_chat_format(tok))
    check_template(tok, text)
    _assert_template_matches(tok, text)


def test_ollama_template_without_system_role(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    from transformers import AutoTokenizer

    from nova.export.gotemplate import render
    from nova.export.ollama import derive_chat_format, go_messages, go_template, modelfile_text

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tok.chat_template = MISTRAL_TEMPLATE
    fmt = derive_chat_format(tok)
    assert fmt.system_first is None and fmt.default_prefix == tok.bos_token
    template = go_template(fmt)
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye"}]
    expected = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert render(template, go_messages(chat)) == expected
    assert render(template, go_messages([{"role": "system", "content": "S"}, *chat])) == expected
    model_dir = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model_dir)
    text = modelfile_text(model_dir, tok, None)
    assert "system messages (and SYSTEM) are ignored" in text


def test_ollama_template_unsupported_format_is_a_clear_error(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from nova.export.ollama import check_template, derive_chat_format, go_template

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tok.chat_template = LLAMA2_TEMPLATE  # system folded into the first user message: not expressible yet
    with pytest.raises(NovaError, match="does not reproduce the chat template") as exc:
        check_template(tok, go_template(derive_chat_format(tok)), system=True)
    assert len(exc.value.lines()) == 1
    tok.chat_template = None
    with pytest.raises(NovaError, match="no chat template"):
        derive_chat_format(tok)


def test_cli_export(tiny_model_dir: Path, tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from nova.cli import export_cmd

    app = typer.Typer()
    app.command("export")(export_cmd.export)
    app.command("noop")(lambda: None)  # two commands, so "export" is a subcommand as in nova.cli.main
    runner = CliRunner()
    out = tmp_path / "m.gguf"
    result = runner.invoke(app, ["export", "--model", str(tiny_model_dir), "--out", str(out), "--outtype", "q8_0"])
    assert result.exit_code == 0, result.output
    assert "Q8_0" in result.output and "KiB" in result.output and result.output.isascii()
    assert out.exists()
    again = runner.invoke(app, ["export", "--model", str(tiny_model_dir), "--out", str(out)])
    assert isinstance(again.exception, NovaError) and "output exists" in str(again.exception)
    bad = runner.invoke(app, ["export", "--model", str(tiny_model_dir), "--out", str(out), "--format", "zip"])
    assert isinstance(bad.exception, NovaError) and "--format" in str(bad.exception)
    ollama = runner.invoke(app, ["export", "--model", str(tiny_model_dir), "--format", "ollama",
                                 "--out", str(tmp_path / "ol")])
    assert ollama.exit_code == 0, ollama.output
    assert "ollama create" in ollama.output



def test_ollama_template_drops_bos_the_runtime_adds(tiny_model_dir: Path) -> None:
    """A tokenizer that adds bos itself (Llama 3, Mistral): Ollama adds it too, so the TEMPLATE must not."""
    from transformers import AutoTokenizer

    from nova.export.gotemplate import render
    from nova.export.ollama import derive_chat_format, go_messages, go_template

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir), add_bos_token=True)
    assert tok("a")["input_ids"][0] == tok.bos_token_id
    for template in (MISTRAL_V3_TEMPLATE, LLAMA3_TEMPLATE):
        tok.chat_template = template
        fmt = derive_chat_format(tok)
        assert fmt.implicit_bos == tok.bos_token
        chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
        expected = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert expected.startswith(tok.bos_token)
        assert render(go_template(fmt), go_messages(chat)) == expected[len(tok.bos_token):]
