"""GGUF -> Hugging Face import: exact weights, tokenizer, chat template, provenance, errors.

The tiny GGUF is written from the tiny model fixture by nova's own exporter at f32, so the import
must reproduce the source logits exactly; the real SmolLM2 Q4_1 file is checked in one slow test.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import ROOT
from nova.errors import NovaError

SMOLLM2_GGUF = Path(os.environ.get("NOVA_SMOLLM2_GGUF", ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
SAMPLE = "What is the capital of France? The capital of France is Paris."


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nova.export.gguf_export import export_gguf

    out = tmp_path_factory.mktemp("tiny-gguf") / "Tiny-Model.F32.gguf"
    return export_gguf(tiny_model_dir, out, outtype="f32").path


@pytest.fixture(scope="module")
def imported(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nova.model.gguf import import_gguf

    return import_gguf(tiny_gguf, tmp_path_factory.mktemp("imports") / "tiny")


def _logits(model_dir: Path, text: str = SAMPLE):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    ids = tok(text, return_tensors="pt")
    with torch.no_grad():
        return ids["input_ids"], model(**ids).logits


def test_import_reproduces_source_logits(tiny_model_dir: Path, imported: Path) -> None:
    import torch

    src_ids, src_logits = _logits(tiny_model_dir)
    imp_ids, imp_logits = _logits(imported)
    assert torch.equal(src_ids, imp_ids), "tokenization changed through GGUF"
    assert torch.allclose(src_logits, imp_logits, atol=1e-5, rtol=0)


def test_import_writes_a_plain_hf_directory(tiny_model_dir: Path, imported: Path, tiny_gguf: Path) -> None:
    from transformers import AutoTokenizer

    names = {p.name for p in imported.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "nova_import.json"} <= names
    config = json.loads((imported / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["dtype"] == "float32"
    assert config["tie_word_embeddings"] is True

    src_tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tok = AutoTokenizer.from_pretrained(str(imported))
    assert tok.chat_template == src_tok.chat_template
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    gen = json.loads((imported / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")
    assert gen["pad_token_id"] == tok.pad_token_id
    assert gen["bos_token_id"] == tok.bos_token_id

    prov = json.loads((imported / "nova_import.json").read_text())
    assert prov["source_name"] == tiny_gguf.name
    assert prov["source_size"] == tiny_gguf.stat().st_size
    assert prov["dtype"] == "float32" and prov["architecture"] == "llama"
    assert not [p for p in imported.parent.iterdir() if p.name.startswith(".")], "temporary dir left behind"


def test_imported_model_trains(imported: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(imported))
    model.train()
    ids = torch.tensor([[1, 5, 6, 7, 8, 2]])
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert model.model.embed_tokens.weight.grad is not None


def test_refuses_non_empty_output_unless_forced(tiny_gguf: Path, tmp_path: Path) -> None:
    from nova.model.gguf import import_gguf

    out = tmp_path / "out"
    import_gguf(tiny_gguf, out)
    (out / "keep.txt").write_text("mine")
    with pytest.raises(NovaError, match="not empty"):
        import_gguf(tiny_gguf, out)
    assert (out / "keep.txt").exists()
    import_gguf(tiny_gguf, out, dtype="bfloat16", force=True)  # an earlier import: --force replaces it
    assert not (out / "keep.txt").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    assert json.loads((out / "nova_import.json").read_text())["dtype"] == "bfloat16"


def test_force_never_replaces_a_directory_nova_did_not_import(tiny_gguf: Path, tmp_path: Path) -> None:
    from nova.model.gguf import import_gguf

    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(NovaError, match=r"not written by nova \(no nova_import.json\)") as err:
        import_gguf(tiny_gguf, out, force=True)
    assert str(out) in str(err.value) and len(err.value.lines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert (out / "keep.txt").read_text() == "mine"


def test_import_records_no_absolute_path(tiny_gguf: Path, tmp_path: Path) -> None:
    from nova.model.gguf import import_gguf

    src = tmp_path / "src" / "Tiny.gguf"
    src.parent.mkdir()
    shutil.copy(tiny_gguf, src)
    out = import_gguf(src, tmp_path / "models" / "tiny")
    text = (out / "nova_import.json").read_text()
    assert str(tmp_path) not in text and str(Path.home()) not in text
    assert json.loads(text)["source_path"] == "../../src/Tiny.gguf"


def test_bad_inputs_give_one_clear_line(tmp_path: Path) -> None:
    import gguf

    from nova.model.gguf import import_gguf

    with pytest.raises(NovaError, match="GGUF file not found") as missing:
        import_gguf(tmp_path / "nope.gguf", tmp_path / "o1")
    text = tmp_path / "model.gguf"
    text.write_text("definitely not a gguf file\n")
    with pytest.raises(NovaError, match="not a GGUF file") as wrong:
        import_gguf(text, tmp_path / "o2")
    odd = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(odd), "nosucharch")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(NovaError, match="unsupported GGUF architecture 'nosucharch'") as arch:
        import_gguf(odd, tmp_path / "o3")
    with pytest.raises(NovaError, match="unknown dtype"):
        import_gguf(odd, tmp_path / "o4", dtype="int4")
    for exc in (missing, wrong, arch):
        assert len(exc.value.lines()) == 1
    assert not any(p.name.startswith("o") for p in tmp_path.iterdir() if p.is_dir())


def test_ensure_hf_model_imports_once_and_reuses(tiny_gguf: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from nova.model import gguf as gguf_mod

    assert gguf_mod.ensure_hf_model("HuggingFaceTB/SmolLM2-135M-Instruct", tmp_path) == \
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    src = tmp_path / tiny_gguf.name
    shutil.copy(tiny_gguf, src)
    models = tmp_path / "models"
    first = gguf_mod.ensure_hf_model(str(src), models)
    assert Path(first) == models / "tiny-model.f32"
    assert (Path(first) / "config.json").exists()

    def no_import(*args: object, **kwargs: object) -> Path:
        raise AssertionError("a current import must be reused")

    monkeypatch.setattr(gguf_mod, "import_gguf", no_import)
    assert gguf_mod.ensure_hf_model(str(src), models) == first
    monkeypatch.undo()

    with src.open("ab") as fh:  # the source changed: the import is redone
        fh.write(b"\0" * 32)
    prov_before = json.loads((Path(first) / "nova_import.json").read_text())
    gguf_mod.ensure_hf_model(str(src), models)
    prov_after = json.loads((Path(first) / "nova_import.json").read_text())
    assert prov_after["source_size"] == prov_before["source_size"] + 32

    foreign = tmp_path / "foreign"
    (foreign / "tiny-model.f32").mkdir(parents=True)
    (foreign / "tiny-model.f32" / "config.json").write_text("{}")
    with pytest.raises(NovaError, match="not a nova GGUF import"):
        gguf_mod.ensure_hf_model(str(src), foreign)


def test_cli_import_gguf(tiny_gguf: Path, tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from nova.cli import models_cmd

    app = typer.Typer()  # the sub-app mounted as in nova.cli.main
    app.add_typer(models_cmd.app, name="models")
    runner = CliRunner()
    out = tmp_path / "cli-import"
    result = runner.invoke(app, ["models", "import-gguf", str(tiny_gguf), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "imported" in result.output and "KiB" in result.output
    assert (out / "model.safetensors").exists()
    again = runner.invoke(app, ["models", "import-gguf", str(tiny_gguf), "--out", str(out)])
    assert isinstance(again.exception, NovaError) and "not empty" in str(again.exception)
    bad = runner.invoke(app, ["models", "import-gguf", str(tiny_gguf), "--out", str(out), "--dtype", "int8"])
    assert isinstance(bad.exception, NovaError) and "--dtype" in str(bad.exception)
    assert all(ord(c) < 128 for c in result.output)


@pytest.mark.slow
def test_real_smollm2_gguf_import(tmp_path: Path) -> None:
    if not SMOLLM2_GGUF.exists():
        pytest.skip(f"SmolLM2 GGUF not found at {SMOLLM2_GGUF} (set NOVA_SMOLLM2_GGUF or run scripts/setup.sh)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nova.model.gguf import import_gguf

    out = import_gguf(SMOLLM2_GGUF, tmp_path / "smollm2")
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    assert tok.eos_token == tok.pad_token == "<|im_end|>"
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2)
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (1, 2, 2)
    assert tok.tokenize(" 2024") == ["\u0120", "2", "0", "2", "4"]  # digits split, as llama.cpp does

    model = AutoModelForCausalLM.from_pretrained(str(out))
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = tok.decode(generated[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_end_of_turn_ids_include_the_template_end_token(tiny_model_dir: Path) -> None:
    """A GGUF whose eos is <|endoftext|> must still stop generation at ChatML's <|im_end|>."""
    from transformers import AutoTokenizer

    from nova.model.gguf import end_of_turn_ids

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    assert end_of_turn_ids(tok) == [tok.convert_tokens_to_ids("<|im_end|>")]
    tok.eos_token = "<|endoftext|>"
    assert end_of_turn_ids(tok) == [tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|im_end|>")]


def test_cli_modules_import_no_heavy_packages() -> None:
    """``nova --help`` must stay fast: the models/export commands load torch and friends only when run."""
    import subprocess
    import sys

    code = ("import sys, nova.cli.models_cmd, nova.cli.export_cmd, nova.export, nova.model.gguf; "
            "print(sorted(m for m in ('torch', 'transformers', 'gguf', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def _without_tensor(src: Path, dest: Path, drop: str) -> Path:
    """A copy of a GGUF file with every key and every tensor but ``drop``."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(src))
    writer = gguf.GGUFWriter(str(dest), str(reader.fields["general.architecture"].contents()))
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = field.types[0]
        writer.add_key_value(name, field.contents(), vtype,
                             sub_type=field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None)
    names = [t.name for t in reader.tensors]
    assert drop in names
    for t in reader.tensors:
        if t.name != drop:
            writer.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dest


def test_a_gguf_missing_a_tensor_the_model_needs_is_refused(tiny_gguf: Path, tmp_path: Path) -> None:
    from nova.model.gguf import import_gguf

    broken = _without_tensor(tiny_gguf, tmp_path / "Broken.F32.gguf", "blk.1.ffn_down.weight")
    with pytest.raises(NovaError, match=r"lacks 1 tensor\(s\) the model needs: model.layers.1.mlp.down_proj.weight"):
        import_gguf(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["Broken.F32.gguf"]
