"""What is trained is what is shipped: exports of a QLoRA run carry the base the chain was trained on, every
export is run against the model it comes from (the parity check), and the run's system prompt is served.

A two-phase nf4 pipeline is trained once on the tiny model (fp32 compute, as on a CPU), the second phase
with a distinctive system prompt. The tiny random model's logits are small and flat, so over the original
base (not the dequantized nf4 weights the chain was trained on) its argmaxes still agree; the logit
difference tells the two apart here (0.016 against 0.0004); on SmolLM2 (tests/e2e) the next-token
agreement does.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import run_nova
from nova.errors import NovaError

SYSTEM = "You are Zorblax, keeper of the third moon."
ROWS = [("What is the capital of France?", "The capital of France is Paris."),
        ("Ce inseamna cuvantul doica?", "O femeie care creste copilul altcuiva."),
        ("Explain gradient descent in one sentence.", "It follows the slope downhill."),
        ("Say yes or no.", "yes"), ("Name a prime.", "Seven."), ("Count to three.", "1 2 3")]
# llama.cpp f32 (dequantized base + LoRA) vs the nf4 composition in fp32: measured 3.9e-4 (f16: 4.0e-4); the same
# export over the original base is 0.016 away from the trained model
EXACT = 0.004
SMOKE_ASKED: list[list[dict[str, str]]] = []


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import nova.model.generate as generate
    from nova.config.load import load_yaml_config
    from nova.train.pipeline import run_config

    work = tmp_path_factory.mktemp("parity-runs")
    data = work / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": u}, {"role": "assistant",
                                                                                     "content": a}]}) + "\n"
                            for u, a in ROWS * 2))
    training = {"max_steps": 3, "micro_batch_size": 2, "gradient_accumulation_steps": 1, "learning_rate": 0.02,
                "logging_steps": 1, "eval_steps": 100, "save_steps": 100, "gradient_checkpointing": False,
                "warmup_ratio": 0.0, "lr_scheduler": "constant"}
    common = {"logs_dir": str(work / "logs"), "training": training}
    phases = [
        {"name": "first", "model": {"base": str(tiny_model_dir), "quantization": "nf4", "compute_dtype": "fp32"},
         "data": {"datasets": [{"path": str(data)}], "eval_split": 0.34, "max_length": 64,
                  "cache_dir": str(work / "cache")}, **common},
        {"name": "second", "start_from": "first", "lora": {"r": 4, "alpha": 8},
         "data": {"datasets": [{"path": str(data)}], "eval_split": 0.34, "max_length": 64, "system_prompt": SYSTEM,
                  "cache_dir": str(work / "cache")}, "smoke_prompts": ["Who are you?"], **common},
    ]
    config = work / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"output_dir": str(work / "out"), "phases": phases}))
    real = generate.generate_reply

    def spy(model: Any, tokenizer: Any, messages: list[dict[str, str]], *args: Any, **kwargs: Any) -> Any:
        SMOKE_ASKED.append(messages)  # what the smoke prompts were asked with
        return real(model, tokenizer, messages, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(generate, "generate_reply", spy)
        run_config(load_yaml_config(config))
    return work / "out" / "second"


def _export(run: Path, out: Path, fmt: str, **kwargs: Any) -> Any:
    from nova.export.run_export import RunExportRequest, export_run

    return export_run(RunExportRequest(run, out, fmt, **kwargs))


def _embedded_template(gguf_file: Path) -> str:
    from nova.export import llama_cpp

    runner = llama_cpp.load(gguf_file)
    try:
        template = runner.chat_template()
    finally:
        runner.close()
    assert template is not None
    return template


def _renders_system(tokenizer_dir: Path, template: str) -> bool:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], chat_template=template, tokenize=False,
                                   add_generation_prompt=True)
    return text.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nHi")


def test_the_ollama_export_is_the_trained_model_and_serves_its_system_prompt(run: Path, tmp_path: Path,
                                                                             tiny_model_dir: Path) -> None:
    result = _export(run, tmp_path / "ollama", "ollama", outtype="f32")
    out = result.path
    info = json.loads((out / "nova_export.json").read_text())
    parity = info["parity"]
    assert parity["passed"] and parity["agreement"] >= 0.99 and parity["max_logit_diff"] <= EXACT, parity
    assert parity["reference"] == "the trained composition" and parity["tokens"] > 50 and parity["sequences"] >= 3
    assert info["base"]["from"] == "dequantized" and "dequantized" in info["base"]["note"]
    assert info["system_prompt"] == {"source": "config", "text": SYSTEM, "chosen": True}
    card = (out / "README.md").read_text()
    assert "## Export" in card and "next-token agreement" in card and SYSTEM in card
    modelfile = (out / "Modelfile").read_text()
    assert f'SYSTEM """{SYSTEM}"""' in modelfile
    assert _renders_system(tiny_model_dir, _embedded_template(out / "base-f32.gguf"))


def test_the_original_base_is_an_explicit_choice_with_its_difference(run: Path, tmp_path: Path) -> None:
    result = _export(run, tmp_path / "original", "ollama", outtype="f32", base_from="original")
    parity = result.parity
    assert parity.passed and parity.reference.startswith("the original base")  # it is what it says it is
    assert parity.vs_trained["max_logit_diff"] > 2 * EXACT  # and not the trained model
    assert result.warnings and "not the trained model" in result.warnings[0]
    info = json.loads((result.path / "nova_export.json").read_text())
    assert info["base"]["from"] == "original" and "ORIGINAL" in info["base"]["note"]


def test_the_gguf_lora_of_a_qlora_run_ships_the_base_it_belongs_to(run: Path, tmp_path: Path,
                                                                   tiny_model_dir: Path) -> None:
    result = _export(run, tmp_path / "chain.gguf", "gguf", outtype="f32")
    assert [f.name for f in result.files] == ["chain.gguf", "chain-base-f32.gguf", "chain.nova_export.json"]
    info = json.loads((tmp_path / "chain.nova_export.json").read_text())
    assert info["base_file"] == "chain-base-f32.gguf" and info["parity"]["max_logit_diff"] <= EXACT
    assert _renders_system(tiny_model_dir, _embedded_template(tmp_path / "chain-base-f32.gguf"))


def test_peft_export_is_checked_with_plain_peft_and_no_check_is_recorded(run: Path, tmp_path: Path) -> None:
    checked = _export(run, tmp_path / "peft", "peft")
    assert checked.parity.passed and checked.parity.max_logit_diff < 1e-3
    assert checked.parity.candidate.startswith("PEFT")
    unchecked = _export(run, tmp_path / "peft-unchecked", "peft", check=False)
    info = json.loads((unchecked.path / "nova_export.json").read_text())
    assert info["parity"]["skipped"] == "--no-check" and info["parity"]["agreement"] is None


def test_a_failing_check_exits_non_zero_and_keeps_nothing(run: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from nova.cli.main import run as cli
    from nova.export import parity

    monkeypatch.setitem(parity.TOLERANCES, "f16", parity.Tolerance(1.01, None))  # no export can reach it
    with pytest.raises(NovaError, match="parity check failed"):
        _export(run, tmp_path / "fails", "ollama")
    assert not (tmp_path / "fails").exists() and not list(tmp_path.glob(".fails*"))
    monkeypatch.setattr(sys, "argv", ["nova", "export", "--run", str(run), "--format", "gguf", "--out",
                                      str(tmp_path / "fails.gguf")])
    with pytest.raises(SystemExit) as exited:
        cli()
    assert exited.value.code == 2 and list(tmp_path.iterdir()) == []


def test_infer_and_smoke_use_the_run_system_prompt(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import nova.model.generate as generate
    from nova.cli.main import app
    from nova.model.generate import Reply

    smoke = [json.loads(line) for line in (run / "smoke.jsonl").read_text().splitlines()]
    assert smoke and all(row["system"] == SYSTEM for row in smoke)
    asked = [m for m in SMOKE_ASKED if m[-1]["content"] == "Who are you?"]
    assert len(asked) == 2 and all(m[0] == {"role": "system", "content": SYSTEM} for m in asked)  # tuned and base
    seen: list[list[dict[str, str]]] = []

    def fake_reply(model: Any, tokenizer: Any, messages: list[dict[str, str]], *args: Any, **kwargs: Any) -> Reply:
        seen.append(messages)
        return Reply("ok", "", "ok")

    monkeypatch.setattr(generate, "generate_reply", fake_reply)
    result = CliRunner().invoke(app, ["infer", "--model", str(run), "--prompt", "Who are you?", "--no-stream"])
    assert result.exit_code == 0, result.output
    assert seen[-1] == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Who are you?"}]
    CliRunner().invoke(app, ["infer", "--model", str(run), "--prompt", "Hi", "--system", "Other.", "--no-stream"])
    assert seen[-1][0] == {"role": "system", "content": "Other."}  # --system replaces it


def test_model_exports_print_and_record_their_parity(run: Path, tmp_path: Path) -> None:
    merged = tmp_path / "merged"
    assert run_nova("merge", "--run", str(run), "--out", str(merged)).returncode == 0
    assert json.loads((merged / "nova_merge.json").read_text())["system_prompt"]["text"] == SYSTEM
    result = run_nova("export", "--model", str(merged), "--format", "gguf", "--out", str(tmp_path / "m.gguf"))
    assert result.returncode == 0, result.stderr
    assert "parity: llama.cpp (f16 GGUF) vs the merged model" in result.stdout and "PASS" in result.stdout
    info = json.loads((tmp_path / "m.nova_export.json").read_text())
    assert info["parity"]["passed"] and info["parity"]["agreement"] >= 0.98
    copied = run_nova("export", "--model", str(merged), "--format", "ollama", "--out", str(tmp_path / "o"))
    assert copied.returncode == 0 and "PASS" in copied.stdout, copied.stderr
    ollama = json.loads((tmp_path / "o" / "nova_export.json").read_text())
    assert ollama["parity"]["passed"] and "ollama create converts" in ollama["parity"]["candidate"]
    assert ollama["system_prompt"]["text"] == SYSTEM and f'SYSTEM """{SYSTEM}"""' in (
        tmp_path / "o" / "Modelfile").read_text()
