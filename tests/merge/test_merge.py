"""``nova merge``: parity with base + adapters, a standalone output, and bad inputs that write nothing.

The run directories are trained once per module with the real trainer on the tiny model (nf4, a
two-phase pipeline). Expected logits are computed here with plain transformers + PEFT, not with
nova's merge code, so a wrong merge cannot agree with itself.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nova.errors import NovaError

TIGHT = 1e-4  # fp32 merge vs fp32 composition; measured ~3e-7 on the tiny model

SFT_ROWS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Ce inseamna cuvantul doica?", "O femeie care creste copilul altcuiva."),
    ("Explain gradient descent in one sentence.", "It follows the slope downhill."),
    ("Say yes or no.", "yes"),
]


def _write_chat(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for user, answer in rows:
            fh.write(json.dumps({"messages": [{"role": "user", "content": user},
                                              {"role": "assistant", "content": answer}]}) + "\n")
    return path


def _phase(name: str, work: Path, data: Path, eval_data: Path, **extra: object) -> dict[str, object]:
    return {
        "name": name,
        "logs_dir": str(work / "logs"),
        "data": {"datasets": [{"path": str(data)}], "eval_datasets": [{"path": str(eval_data)}],
                 "max_length": 64, "cache_dir": str(work / "cache")},
        "training": {"max_steps": 2, "micro_batch_size": 2, "gradient_accumulation_steps": 1,
                     "learning_rate": 0.02, "logging_steps": 1, "eval_steps": 100, "save_steps": 1,
                     "gradient_checkpointing": False, "warmup_ratio": 0.0, "lr_scheduler": "constant"},
        **extra,
    }


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: on a shared 2-core machine two spinning OpenMP threads make tiny matmuls ~100x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A two-phase nf4 pipeline trained for real: 'first' (one adapter) and 'second' (first + second)."""
    from nova.config.load import load_yaml_config
    from nova.train.pipeline import run_config

    work = tmp_path_factory.mktemp("merge-runs")
    data = _write_chat(work / "train.jsonl", SFT_ROWS * 2)
    eval_data = _write_chat(work / "eval.jsonl", SFT_ROWS[:2])
    config = {
        "output_dir": str(work / "out"),
        "phases": [
            # fp32 compute, so "the trained model" is exact enough to compare the merge against
            _phase("first", work, data, eval_data,
                   model={"base": str(tiny_model_dir), "quantization": "nf4", "compute_dtype": "fp32"}),
            _phase("second", work, data, eval_data, start_from="first", lora={"r": 4, "alpha": 8}),
        ],
    }
    config_file = work / "pipeline.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    run_config(load_yaml_config(config_file))
    out = work / "out"
    assert (out / "first" / "checkpoints").exists() and (out / "second" / "adapter").exists()
    return {"first": out / "first", "second": out / "second", "work": work}


def _merge(run: Path, out: Path | None, **kwargs: object) -> Any:
    from nova.merge.inputs import MergeRequest
    from nova.merge.run import merge_run

    return merge_run(MergeRequest(run_dir=run, out=out, **kwargs))  # type: ignore[arg-type]


def _inputs(model_dir: Path) -> list[object]:
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    texts = [tok.apply_chat_template([{"role": "user", "content": u}, {"role": "assistant", "content": a}],
                                     tokenize=False) for u, a in SFT_ROWS]
    return [torch.tensor([tok(t, add_special_tokens=False).input_ids]) for t in texts]


def _logits(model: object, inputs: list[object]) -> list[object]:
    import torch

    with torch.no_grad():
        return [model(input_ids=ids).logits[0].float() for ids in inputs]  # type: ignore[operator]


def _diff(a: list[object], b: list[object]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))  # type: ignore[operator]


def _plain_composition(base: Path, adapters: list[tuple[str, Path]]) -> object:
    """fp32 base + adapters with plain PEFT, all active (the reference the merge must equal)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    name, path = adapters[0]
    model = PeftModel.from_pretrained(model, str(path), adapter_name=name)
    for name, path in adapters[1:]:
        model.load_adapter(str(path), adapter_name=name)
    model.base_model.set_adapter([n for n, _ in adapters])
    return model.eval()


def _load_plain(out: Path) -> object:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def merged_chain(runs: dict[str, Path]) -> Iterator[tuple[Path, object]]:
    out = runs["work"] / "second-merged-original"
    result = _merge(runs["second"], out, source="original", dtype="fp32")
    yield out, result


def test_single_phase_merge_equals_base_plus_adapter(runs: dict[str, Path], tiny_model_dir: Path) -> None:
    out = runs["work"] / "first-merged"
    result = _merge(runs["first"], out, source="original")
    inputs = _inputs(out)
    reference = _logits(_plain_composition(tiny_model_dir, [("first", runs["first"] / "adapter")]), inputs)
    merged = _logits(_load_plain(out), inputs)
    assert _diff(merged, reference) < TIGHT
    base = _logits(_load_plain(tiny_model_dir), inputs)
    assert _diff(base, reference) > 100 * TIGHT, "the adapter must change the model, or parity proves nothing"
    assert result.parity.merged_vs_unmerged < TIGHT
    assert result.adapters == ["first"]


def test_two_phase_chain_merges_every_adapter(runs: dict[str, Path], tiny_model_dir: Path,
                                              merged_chain: tuple[Path, object]) -> None:
    out, result = merged_chain
    inputs = _inputs(out)
    both = [("first", runs["first"] / "adapter"), ("second", runs["second"] / "adapter")]
    reference = _logits(_plain_composition(tiny_model_dir, both), inputs)
    merged = _logits(_load_plain(out), inputs)
    assert _diff(merged, reference) < TIGHT
    only_last = _logits(_plain_composition(tiny_model_dir, both[1:]), inputs)
    assert _diff(merged, only_last) > 100 * TIGHT, "the earlier phase's adapter must be part of the merge"
    assert result.adapters == ["first", "second"]  # type: ignore[attr-defined]
    assert result.parity.saved_vs_merged_cast == 0.0  # type: ignore[attr-defined]


def test_output_is_a_standalone_model_without_training_state(merged_chain: tuple[Path, object]) -> None:
    from transformers import AutoTokenizer, GenerationConfig

    out, _ = merged_chain
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer_config.json", "nova_merge.json"} <= names
    assert any(n.endswith(".safetensors") for n in names)
    for path in out.rglob("*"):
        low = path.name.lower()
        assert not any(word in low for word in ("optimizer", "checkpoint", "adapter", "scheduler", "rng_state",
                                                "trainer_state", "training_args")), path
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt"))
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    gen = GenerationConfig.from_pretrained(str(out))
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    assert tok.convert_tokens_to_ids("<|im_end|>") in eos
    model = _load_plain(out)
    assert not any("lora" in n for n, _ in model.named_parameters())  # type: ignore[attr-defined]
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: transformers" in card and "first -> second" in card
    assert not (out.parent / (out.name + ".tmp")).exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_training_leaves_cards_and_a_marked_chain_that_exports_standalone(
        runs: dict[str, Path], merged_chain: tuple[Path, object], tiny_model_dir: Path, tmp_path: Path) -> None:
    """PEFT's empty card is replaced, the chained adapter says what it needs, an export of the merged model
    carries the run's card, and the standalone export of the trained (nf4) chain equals both adapters
    stacked on the fp32 base."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from nova.export.run_export import export_peft

    first, second = (runs[n] / "adapter" for n in ("first", "second"))
    assert "[More Information Needed]" not in (first / "README.md").read_text()
    assert "## Requires" not in (first / "README.md").read_text()
    assert "## Requires the earlier adapters" in (second / "README.md").read_text()
    assert "after its stage sft" in (runs["second"] / "stages" / "sft" / "adapter" / "README.md").read_text()
    assert json.loads((second / "adapter_config.json").read_text())["nova_requires_adapters"]["adapters"] == ["first"]
    from nova.export.ollama import export_ollama

    ollama = export_ollama(merged_chain[0], tmp_path / "ollama").path
    assert "first -> second" in (ollama / "README.md").read_text()  # found through nova_merge.json
    out = export_peft(runs["second"], tmp_path / "standalone").path
    inputs = _inputs(tiny_model_dir)
    expected = _logits(_plain_composition(tiny_model_dir, [("first", first), ("second", second)]), inputs)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    assert _diff(_logits(PeftModel.from_pretrained(base, str(out)).eval(), inputs), expected) <= TIGHT


def test_dequantized_reproduces_the_trained_model(runs: dict[str, Path], merged_chain: tuple[Path, object]) -> None:
    """--from dequantized equals the quantized composition that was trained; original is off by nf4's error."""
    _, original = merged_chain
    out = runs["work"] / "second-merged-dequantized"
    result = _merge(runs["second"], out)
    assert result.source == "dequantized"
    assert result.parity.vs_trained is not None and result.parity.vs_trained < TIGHT
    assert original.parity.vs_trained > 100 * result.parity.vs_trained  # type: ignore[attr-defined]
    info = json.loads((out / "nova_merge.json").read_text())
    assert info["from"] == "dequantized" and [a["name"] for a in info["adapters"]] == ["first", "second"]


def test_existing_output_is_refused_without_force(runs: dict[str, Path]) -> None:
    out = runs["work"] / "existing"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "nova_merge.json").write_text("{}")  # an earlier merge
    with pytest.raises(NovaError, match="already exists"):
        _merge(runs["first"], out)
    assert (out / "config.json").read_text() == "{}"
    result = _merge(runs["first"], out, force=True, dtype="fp16")
    assert result.dtype == "float16"
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".existing")] == []


def test_force_never_replaces_a_directory_that_is_not_a_model(runs: dict[str, Path]) -> None:
    out = runs["work"] / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    (out / "config.json").write_text("{}")  # someone's own model: a config.json proves nothing
    with pytest.raises(NovaError, match="nova merge did not write"):
        _merge(runs["first"], out, force=True)
    with pytest.raises(NovaError, match="overwrite an input"):
        _merge(runs["second"], runs["first"], force=True)
    assert (out / "notes.txt").read_text() == "keep"
    assert (runs["first"] / "adapter" / "adapter_config.json").exists()


def test_run_without_adapter_fails_clearly_and_writes_nothing(runs: dict[str, Path], tmp_path: Path) -> None:
    from nova.merge.inputs import default_out

    run = tmp_path / "unfinished"
    shutil.copytree(runs["first"], run, ignore=shutil.ignore_patterns("adapter"))
    with pytest.raises(NovaError, match="has no adapter"):
        _merge(run, None)
    (run / "COMPLETE").unlink()
    with pytest.raises(NovaError, match="did not finish training"):
        _merge(run, None)
    assert not default_out(run).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unfinished"]


def test_chain_is_read_in_order_and_found_after_a_move(runs: dict[str, Path], tmp_path: Path) -> None:
    from nova.merge.inputs import read_inputs

    info = read_inputs(runs["second"])
    assert [r.name for r in info.adapters] == ["first", "second"]
    assert info.conversations[0][-1] == {"role": "assistant", "content": SFT_ROWS[0][1]}  # the run's eval data
    moved = tmp_path / "moved"
    for name in ("first", "second"):
        shutil.copytree(runs[name], moved / name, ignore=shutil.ignore_patterns("checkpoints"))
    config = yaml.safe_load((moved / "second" / "config.yaml").read_text())
    config["_chain"][0]["adapter"] = str(tmp_path / "gone" / "first" / "adapter")
    (moved / "second" / "config.yaml").write_text(yaml.safe_dump(config))
    assert read_inputs(moved / "second").adapters[0].path == moved / "first" / "adapter"
    shutil.rmtree(moved / "first")
    with pytest.raises(NovaError, match="earlier phase 'first' is missing"):
        read_inputs(moved / "second")


def test_adapter_of_another_base_is_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    from tiny_model import build_tiny_model

    run = tmp_path / "run"
    shutil.copytree(runs["first"], run, ignore=shutil.ignore_patterns("checkpoints"))
    config_file = run / "adapter" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = "someone/other-model"
    config_file.write_text(json.dumps(config))
    with pytest.raises(NovaError, match="was trained on 'someone/other-model'"):
        _merge(run, tmp_path / "out")
    # Same recorded name, different shapes: the run's base is swapped for a wider model.
    other = build_tiny_model(tmp_path / "wide", hidden=96)
    config["base_model_name_or_path"] = str(other)
    config_file.write_text(json.dumps(config))
    run_config = yaml.safe_load((run / "config.yaml").read_text())
    run_config["model"]["base"] = str(other)
    (run / "config.yaml").write_text(yaml.safe_dump(run_config))
    with pytest.raises(NovaError, match="does not fit the base model"):
        _merge(run, tmp_path / "out", source="original")
    assert not (tmp_path / "out").exists()


def test_not_enough_disk_fails_before_writing(runs: dict[str, Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import nova.merge.inputs

    monkeypatch.setattr(nova.merge.inputs.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9, 1000))  # type: ignore[attr-defined]
    with pytest.raises(NovaError, match="not enough disk space"):
        _merge(runs["first"], tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_failure_while_writing_leaves_nothing(runs: dict[str, Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import nova.merge.write

    def broken(*_: object) -> float:
        raise NovaError("simulated reload failure")

    monkeypatch.setattr(nova.merge.write, "check_saved", broken)
    with pytest.raises(NovaError, match="simulated"):
        _merge(runs["first"], tmp_path / "out", source="original")
    assert list(tmp_path.iterdir()) == []


def test_parity_above_tolerance_is_an_error(runs: dict[str, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from peft import PeftModel

    import nova.merge.weights

    real = nova.merge.weights.compute_logits
    plain_calls: list[int] = []

    def skewed(model: object, batches: list[object]) -> list[object]:
        logits = real(model, batches)
        if isinstance(model, PeftModel):
            return logits
        plain_calls.append(1)  # the first model without PEFT is the merged one
        return [x + 1.0 for x in logits] if len(plain_calls) == 1 else logits

    monkeypatch.setattr(nova.merge.weights, "compute_logits", skewed)
    with pytest.raises(NovaError, match="above the tolerance"):
        _merge(runs["first"], tmp_path / "out", source="original")
    assert list(tmp_path.iterdir()) == []


def test_quantization_none_ignores_from(runs: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(runs["first"], run, ignore=shutil.ignore_patterns("checkpoints"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["quantization"] = "none"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    result = _merge(run, tmp_path / "out", source="dequantized")
    assert result.source == "original" and result.parity.vs_trained is None
    assert any("quantization: none" in n for n in result.notes)


def test_eos_includes_the_end_of_turn_token(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nova.merge.write import end_of_turn_id, generation_config

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tok.eos_token = "<|endoftext|>"  # a base whose eos is not the chat end-of-turn token
    im_end, eot = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    assert end_of_turn_id(tok) == im_end
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    model.config.eos_token_id = eot
    gen = generation_config(str(tmp_path), model, tok)  # no generation_config.json: from the model config
    assert sorted(gen.eos_token_id) == sorted([eot, im_end])
    assert gen.pad_token_id == tok.pad_token_id


def test_merge_and_its_command_import_light() -> None:
    """The CLI takes its defaults from nova.merge, so importing it must load no torch (nor the schema)."""
    import subprocess
    import sys

    code = ("import sys, nova.merge, nova.cli.merge_cmd; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'pydantic') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"


def test_cli_merge_prints_sizes_and_json(runs: dict[str, Path], tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from nova.cli import merge_cmd

    app = typer.Typer()
    app.command("merge")(merge_cmd.merge)
    app.command("other")(lambda: None)
    out = tmp_path / "cli-out"
    result = CliRunner().invoke(app, ["merge", "--run", str(runs["first"]), "--out", str(out), "--from", "original"])
    assert result.exit_code == 0, result.output
    assert "output size:" in result.stdout and "checkpoints" in result.stdout
    assert result.stdout.isascii()
    result = CliRunner().invoke(app, ["merge", "--run", str(runs["first"]), "--out", str(out), "--json"])
    assert isinstance(result.exception, NovaError) and "already exists" in str(result.exception)


@pytest.mark.slow
def test_real_model_merge(real_model_dir: Path, tmp_path: Path) -> None:
    """A short nf4 SFT run on SmolLM2-135M merges with fp32 parity and reloads with plain transformers."""
    from nova.config.load import load_yaml_config
    from nova.train.pipeline import run_config

    data = _write_chat(tmp_path / "train.jsonl", SFT_ROWS)
    phase = _phase("real", tmp_path, data, data, model={"base": str(real_model_dir), "quantization": "nf4",
                                                                  "compute_dtype": "fp32"},
                   output_dir=str(tmp_path / "run"))
    phase["training"] = {**phase["training"], "max_steps": 1, "learning_rate": 0.001}  # type: ignore[dict-item]
    (tmp_path / "phase.yaml").write_text(yaml.safe_dump(phase))
    run_config(load_yaml_config(tmp_path / "phase.yaml"))
    result = _merge(tmp_path / "run", None)
    out = tmp_path / "run-merged"
    assert result.out_dir == out and (out / "config.json").exists()
    assert result.parity.merged_vs_unmerged < 1e-3
    assert result.parity.vs_trained is not None and result.parity.vs_trained < 1e-2
    assert result.output_bytes > 100 * 2**20
