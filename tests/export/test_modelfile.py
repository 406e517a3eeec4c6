"""Modelfiles as ``ollama create`` parses them (tests/export/modelfile_grammar.py, a port of ollama's
parser), stop tokens from the tokenizer, and the Ollama export of a run: base GGUF + ADAPTER."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from modelfile_grammar import ModelfileError, check_parameters, parse

from run_fixtures import chained_runs


def test_the_grammar_port_reads_what_ollama_reads() -> None:
    text = ('# comment\nFROM ./m.gguf\nADAPTER ./a.gguf\nTEMPLATE """{{ .Prompt }}\n  two "lines" """\n'
            'PARAMETER stop "a\\\\b"\nPARAMETER stop "<|x|>"\nparameter num_ctx 512\nSYSTEM """You are "N"."""\n'
            'MESSAGE user hello there\nLICENSE apache-2.0\n')
    commands = parse(text)
    assert commands[0] == ("model", "./m.gguf") and ("adapter", "./a.gguf") in commands
    assert ("template", '{{ .Prompt }}\n  two "lines" ') in commands
    assert ("stop", "a\\\\b") in commands  # no escapes: both backslashes stay
    assert ("system", 'You are "N".') in commands and ("message", "user: hello there") in commands
    assert check_parameters(commands) == {"stop": ["a\\\\b", "<|x|>"], "num_ctx": 512}
    for bad, why in (("TEMPLATE x\n", "no FROM"), ("FROM x\nFOO y\n", "unknown command"),
                     ('FROM x\nTEMPLATE """open\n', "unclosed"), ("FROM x\nMESSAGE tool hi\n", "role")):
        with pytest.raises(ModelfileError, match=why):
            parse(bad)
    with pytest.raises(ModelfileError, match="unknown parameter"):
        check_parameters(parse("FROM x\nPARAMETER temprature 0.7\n"))
    with pytest.raises(ModelfileError, match="invalid int"):
        check_parameters(parse("FROM x\nPARAMETER num_ctx big\n"))


def test_exported_modelfile_is_accepted(tiny_model_dir: Path, tmp_path: Path) -> None:
    from nova.export.ollama import export_ollama

    out = export_ollama(tiny_model_dir, tmp_path / "ollama").path
    text = (out / "Modelfile").read_text()
    commands = parse(text)
    assert commands[0] == ("model", ".")
    template = dict(commands)["template"]
    assert template.startswith("{{ range $i, $_ := .Messages }}") and text.count(template) == 1
    params = check_parameters(commands)
    assert params["stop"] == ["<|im_end|>"] and params["num_ctx"] == 512 and isinstance(params["temperature"], float)
    assert (out / "README.md").read_text().startswith("---\n")


def test_stop_tokens_come_from_the_tokenizer(tiny_model_dir: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    from nova.export.ollama import modelfile_text

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    own = copy.deepcopy(tok)
    own.add_special_tokens({"additional_special_tokens": ["<|turn_end|>"]})
    own.chat_template = tok.chat_template.replace("<|im_end|>", "<|turn_end|>")
    text = modelfile_text(tiny_model_dir, own, AutoConfig.from_pretrained(str(tiny_model_dir)))
    assert check_parameters(parse(text))["stop"] == ["<|im_end|>", "<|turn_end|>"]
    quoted = copy.deepcopy(tok)
    quoted.add_special_tokens({"additional_special_tokens": ['<"end">']})
    quoted.chat_template = tok.chat_template.replace("<|im_end|>", '<"end">')
    text = modelfile_text(tiny_model_dir, quoted, AutoConfig.from_pretrained(str(tiny_model_dir)))
    assert check_parameters(parse(text))["stop"] == ["<|im_end|>", '<"end">']  # read back exactly


def test_ollama_export_of_a_run_has_base_and_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    from nova.export.run_export import export_ollama_run

    runs = chained_runs(tmp_path / "runs", tiny_model_dir)
    out = export_ollama_run(runs["second"], tmp_path / "ollama-run").path
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "README.md", "adapter.gguf", "base-f16.gguf",
                                                     "nova_export.json"]
    commands = parse((out / "Modelfile").read_text())
    assert commands[0] == ("model", "./base-f16.gguf") and commands[1] == ("adapter", "./adapter.gguf")
    check_parameters(commands)
    card = (out / "README.md").read_text()
    assert "library_name: gguf" in card and "first -> second" in card
