"""``nova export --format peft``: one standalone PEFT adapter equal to the whole chain, and the GGUF LoRA.

Two run directories are written by hand (random adapters, no training): 'first' targets q/v with an
alpha_pattern, 'second' every linear module with rsLoRA and a different rank, stacked on 'first'.
The reference is plain PEFT with both adapters active on the unquantized base; the export must give
its logits when loaded with nothing but ``PeftModel.from_pretrained``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import run_nova
from nova.errors import NovaError
from run_fixtures import chained_runs

TIGHT = 2e-5  # fp32 folded vs stacked: summation order only (measured ~2e-6)


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return chained_runs(tmp_path_factory.mktemp("chain"), tiny_model_dir)


def _ids(base: Path) -> Any:
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"},
                                    {"role": "assistant", "content": "Paris."}], tokenize=False)
    return torch.tensor([tok(text, add_special_tokens=False).input_ids])


def _stacked(base: Path, runs: dict[str, Path]) -> Any:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(runs["first"] / "adapter"), adapter_name="first")
    model.load_adapter(str(runs["second"] / "adapter"), adapter_name="second")
    model.base_model.set_adapter(["first", "second"])
    return model.eval()


def _logits(model: Any, ids: Any) -> Any:
    import torch

    with torch.no_grad():
        return model(input_ids=ids).logits[0]


def test_standalone_adapter_equals_the_stacked_chain(runs: dict[str, Path], tiny_model_dir: Path,
                                                     tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from nova.export.run_export import export_peft

    out = export_peft(runs["second"], tmp_path / "standalone").path
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 8 + 4 and not config["use_rslora"]
    assert config["rank_pattern"] == {} and config["alpha_pattern"] == {}
    assert sorted(config["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    ids = _ids(tiny_model_dir)
    expected = _logits(_stacked(tiny_model_dir, runs), ids)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    plain = PeftModel.from_pretrained(base, str(out)).eval()  # nothing but PEFT
    got = _logits(plain, ids)
    without = _logits(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32), ids)
    assert float((got - expected).abs().max()) <= TIGHT
    assert float((without - expected).abs().max()) > 100 * TIGHT  # the adapters matter
    second_alone = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32), str(runs["second"] / "adapter"))
    assert float((_logits(second_alone.eval(), ids) - expected).abs().max()) > 100 * TIGHT  # why this export exists
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft\n") and "[More Information Needed]" not in card
    assert "--max-lora-rank 16" in card and "first -> second" in card


def test_cli_export_prints_each_file_and_refuses_what_it_cannot_do(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cli-standalone"
    result = run_nova("export", "--run", str(runs["second"]), "--format", "peft", "--out", str(out))
    assert result.returncode == 0, result.stderr
    for name in ("adapter_model.safetensors", "adapter_config.json", "README.md", "nova_export.json"):
        assert any(line.strip().startswith(str(out / name) + "  ") for line in result.stdout.splitlines()), name
    assert "total " in result.stdout and "rank 12" in result.stdout
    again = run_nova("export", "--run", str(runs["second"]), "--format", "peft", "--out", str(out))
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "not empty" in again.stderr
    bad = run_nova("export", "--model", str(out), "--format", "peft", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "--run RUN_DIR" in bad.stderr and bad.stderr.count("\n") == 1


def test_missing_earlier_adapter_is_one_clear_error(runs: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from nova.export.run_export import export_peft

    moved = tmp_path / "moved"
    shutil.copytree(runs["second"], moved / "pipe" / "second")
    config = (moved / "pipe" / "second" / "config.yaml")
    config.write_text(config.read_text().replace(str(runs["first"]), str(tmp_path / "gone")))
    with pytest.raises(NovaError, match="adapter of earlier phase 'first' is missing"):
        export_peft(moved / "pipe" / "second", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_dora_adapters_are_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from nova.export.run_export import export_peft

    copy = tmp_path / "pipe"
    shutil.copytree(runs["first"].parent, copy)
    cfg = copy / "first" / "adapter" / "adapter_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "use_dora": True}))
    with pytest.raises(NovaError, match="uses DoRA"):
        export_peft(copy / "first", tmp_path / "out")


def test_gguf_lora_over_the_base_gguf_equals_the_stacked_chain(runs: dict[str, Path], tiny_model_dir: Path,
                                                               tmp_path: Path) -> None:
    """llama.cpp applies the exported GGUF LoRA over the base's GGUF: the logits of the stacked chain."""
    from nova.export import llama_cpp
    from nova.export.gguf_export import export_gguf
    from nova.export.run_export import export_lora_gguf

    base = export_gguf(tiny_model_dir, tmp_path / "base-f32.gguf", outtype="f32").path
    lora = export_lora_gguf(runs["second"], tmp_path / "chain-lora.gguf", outtype="f32").path
    ids = _ids(tiny_model_dir)
    expected = _logits(_stacked(tiny_model_dir, runs), ids).numpy()
    runner = llama_cpp.load(base, lora=lora)
    try:
        got = runner.logits(ids[0].tolist())
    finally:
        runner.close()
    plain = llama_cpp.load(base)
    try:
        without = plain.logits(ids[0].tolist())
    finally:
        plain.close()
    assert abs(got - expected).max() <= 2e-3
    assert abs(without - expected).max() > 0.1
