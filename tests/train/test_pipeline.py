"""Pipelines: Doica then Sora (SFT, then DPO) on the tiny model, chained by stacked adapters."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import ROOT
from nova.config import load_yaml_config
from nova.console import RunLog
from nova.train.pipeline import run_config

pytestmark = pytest.mark.trains  # whole runs: outside the development loop (README, "Development")


def pipeline_yaml(tmp: Path, model: Path) -> Path:
    train = ("{max_steps: %d, micro_batch_size: 2, gradient_accumulation_steps: 1, learning_rate: %s, "
             "warmup_steps: 0, logging_steps: 1, eval_steps: 100, save_steps: 100, gradient_checkpointing: false}")
    text = f"""
output_dir: {tmp / "out"}
phases:
  - name: doica
    model: {{base: {model}, quantization: nf4}}
    data: {{datasets: [{{path: {ROOT / "data" / "doica_ro.jsonl"}, max_samples: 30}}], eval_split: 0.2,
            max_length: 128}}
    training: {train % (4, "5.0e-3")}
    logs_dir: {tmp / "logs"}
  - name: sora
    start_from: doica
    lora: {{r: 16, alpha: 32, dropout: 0.1}}
    logs_dir: {tmp / "logs"}
    retention: {{replay: 0.3, kl_weight: 0.5}}
    monitor: {{retention_sets: [{{path: {ROOT / "data" / "rrt_ro_text.jsonl"}, max_samples: 6}}]}}
    stages:
      - method: sft
        data: {{datasets: [{{path: {ROOT / "data" / "sora_en.jsonl"}, max_samples: 30}}], eval_split: 0.2,
                max_length: 128}}
        training: {train % (3, "5.0e-3")}
      - method: dpo
        data: {{datasets: [{{path: {ROOT / "data" / "sora_dpo.jsonl"}, max_samples: 40}}], eval_split: 0.25}}
        dpo: {{beta: 0.1, max_prompt_length: 64, max_completion_length: 64}}
        training: {train % (8, "2.0e-2")}
"""
    path = tmp / "pipeline.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("pipeline")
    config = pipeline_yaml(tmp, tiny_model_dir)
    run_config(load_yaml_config(config), log=RunLog(tmp / "log.txt"))
    return tmp


def metrics(run: Path, stage: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["stage"] == stage]


def test_outputs_and_pipeline_json(pipeline: Path) -> None:
    out = pipeline / "out"
    state = json.loads((out / "pipeline.json").read_text())
    assert [state["phases"][p]["status"] for p in ("doica", "sora")] == ["done", "done"]
    for phase in ("doica", "sora"):
        assert (out / phase / "adapter" / "adapter_config.json").exists()
        assert (out / phase / "config.yaml").exists() and (out / phase / "metrics.jsonl").exists()
        assert state["phases"][phase]["started"] <= state["phases"][phase]["ended"]
    assert (out / "sora" / "stages" / "sft" / "adapter").exists()
    assert (out / "sora" / "stages" / "dpo" / "adapter").exists()


def _logits(model, tokenizer, prompts: list[str]):  # type: ignore[no-untyped-def]
    import torch

    rows = []
    with torch.no_grad():
        for p in prompts:
            text = tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                 add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
            rows.append(model(input_ids=ids).logits)
    return rows


def test_sora_starts_exactly_where_doica_ended(pipeline: Path, tiny_model_dir: Path) -> None:
    import torch

    from nova.config.schema import LoraConfig, ModelConfig
    from nova.model.adapters import AdapterRef, activate, add_trainable, stack_frozen
    from nova.model.loading import choose_placement, load_base_model, load_tokenizer

    cfg = ModelConfig(base=str(tiny_model_dir))
    placement = choose_placement("auto")
    tok = load_tokenizer(cfg)
    doica = AdapterRef("doica", pipeline / "out" / "doica" / "adapter")
    tuned = stack_frozen(load_base_model(cfg, placement), [doica])
    activate(tuned, ["doica"])
    start = add_trainable(load_base_model(cfg, placement), LoraConfig(r=16, alpha=32, dropout=0.1), [doica])
    base = load_base_model(cfg, placement)
    for m in (tuned, start, base):
        m.eval()
    prompts = ["Care este capitala Romaniei?", "Who are you?", "2 + 2 = ?"]
    for a, b, c in zip(_logits(tuned, tok, prompts), _logits(start, tok, prompts), _logits(base, tok, prompts),
                       strict=True):
        assert torch.equal(a, b)
        assert not torch.allclose(a, c)  # and Doica really changed the model


def test_dpo_step_zero_policy_equals_reference(pipeline: Path) -> None:
    first_eval = next(r for r in metrics(pipeline / "out" / "sora", "dpo") if "eval_loss" in r)
    assert first_eval["step"] == 0
    assert math.isclose(first_eval["eval_loss"], math.log(2), abs_tol=1e-4)
    assert abs(first_eval["eval_rewards/margins"]) < 1e-4
    assert abs(first_eval["eval_rewards/chosen"]) < 1e-4 and abs(first_eval["eval_rewards/rejected"]) < 1e-4


def test_dpo_raises_the_margin_and_lowers_the_loss(pipeline: Path) -> None:
    records = [r for r in metrics(pipeline / "out" / "sora", "dpo") if "eval_loss" in r]
    start, end = records[0], records[-1]
    assert end["step"] > start["step"]
    assert end["eval_rewards/margins"] > start["eval_rewards/margins"]
    train = [r for r in metrics(pipeline / "out" / "sora", "dpo") if "loss" in r]
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"} <= set(train[-1])
    assert end["eval_loss"] < start["eval_loss"]
    # Accuracy needs a model that can tell the answers apart: tests/test_real_model.py checks it on SmolLM2.



def test_failed_phase_keeps_earlier_phases_and_resumes(pipeline: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import nova.train.stage as stage_mod

    work = tmp_path / "copy"
    shutil.copytree(pipeline / "out" / "doica", work / "out" / "doica")
    text = (pipeline / "pipeline.yaml").read_text().replace(str(pipeline / "out"), str(work / "out"))
    config = tmp_path / "pipeline.yaml"
    config.write_text(text)
    doica_adapter = work / "out" / "doica" / "adapter" / "adapter_model.safetensors"
    before = doica_adapter.read_bytes()

    real_run_stage = stage_mod.run_stage

    def crash(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("simulated crash in sora")

    monkeypatch.setattr(stage_mod, "run_stage", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_config(load_yaml_config(config), log=RunLog(tmp_path / "log1.txt"))
    state = json.loads((work / "out" / "pipeline.json").read_text())
    assert state["phases"]["doica"]["status"] == "done"
    assert state["phases"]["sora"]["status"] == "failed" and "simulated crash" in state["phases"]["sora"]["error"]
    assert doica_adapter.read_bytes() == before
    assert not (work / "out" / "sora" / "COMPLETE").exists()

    monkeypatch.setattr(stage_mod, "run_stage", real_run_stage)
    results = run_config(load_yaml_config(config), log=RunLog(tmp_path / "log2.txt"))
    assert [r.skipped for r in results] == [True, False]
    assert doica_adapter.read_bytes() == before
    assert (work / "out" / "sora" / "COMPLETE").exists()


def test_interrupted_between_stages_resumes_to_the_same_result(pipeline: Path, tmp_path: Path) -> None:
    """Sora stopped after its SFT stage: the re-run skips Doica and Sora's SFT and redoes DPO identically."""
    import shutil

    from safetensors.torch import load_file

    work = tmp_path / "out"
    shutil.copytree(pipeline / "out", work)
    sora = work / "sora"
    for leftover in ("COMPLETE", "adapter", "stages/dpo", "checkpoints/dpo"):
        target = sora / leftover
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    config = tmp_path / "pipeline.yaml"
    config.write_text((pipeline / "pipeline.yaml").read_text().replace(str(pipeline / "out"), str(work)))
    log = tmp_path / "log.txt"
    results = run_config(load_yaml_config(config), log=RunLog(log))
    assert [r.skipped for r in results] == [True, False]
    assert "[sora/sft] already done" in log.read_text()
    first = load_file(str(pipeline / "out" / "sora" / "adapter" / "adapter_model.safetensors"))
    again = load_file(str(sora / "adapter" / "adapter_model.safetensors"))
    for key in first:
        assert (first[key] - again[key]).abs().max() < 1e-6, key


def test_forgetting_table_in_pipeline_json_status_and_plot(pipeline: Path) -> None:
    """After Sora, Doica's holdout is scored on Sora's model; before = Doica's own loss when it finished."""
    from nova.monitor.plot import forgetting_bars
    from nova.monitor.render import status_lines
    from nova.monitor.status import read_status
    from nova.runs.layout import RunDir

    out = pipeline / "out"
    doica = json.loads((out / "doica" / "retention.json").read_text())
    sora = json.loads((out / "sora" / "retention.json").read_text())
    state = json.loads((out / "pipeline.json").read_text())["phases"]
    row = state["sora"]["forgetting"]["doica"]
    assert row["eval_loss_before"] == pytest.approx(doica["after"]["doica"]["eval_loss"], abs=1e-5)
    assert row["eval_loss_after"] == pytest.approx(sora["after"]["doica"]["eval_loss"], abs=1e-5)
    assert row["change"] == pytest.approx((row["eval_loss_after"] - row["eval_loss_before"])
                                          / row["eval_loss_before"], abs=1e-3)
    assert row["eval_loss_after"] != row["eval_loss_before"]  # Sora's adapter changed the composition
    assert state["doica"]["forgetting"] == {} and state["doica"]["eval_loss"] > 0
    retention_set = next(k for k in sora["forgetting"] if k.startswith("retention:"))
    assert sora["start"][retention_set]["tokens"] > 0  # scored on the start composition, before training
    status = read_status(out).to_dict()
    assert status["phases"][1]["forgetting"]["doica"] == row
    assert any("forgetting: doica holdout loss" in line for line in status_lines(read_status(out)))
    assert [b[0] for b in forgetting_bars(RunDir(out / "sora"))] == ["doica", retention_set]


def test_replay_mixes_doica_into_every_sft_stage_and_is_counted(pipeline: Path) -> None:
    out = pipeline / "out"
    report = json.loads((out / "sora" / "stages" / "sft" / "data_report.json").read_text())
    own = report["train_records"]
    assert report["replayed"] == {"doica": round(own * 0.3 / 0.7)} and report["replay_share"] == 0.3
    dpo = json.loads((out / "sora" / "stages" / "dpo" / "data_report.json").read_text())
    assert dpo["replayed"] == {}  # preference stages are not replayed into
    sealed = json.loads((out / "sora" / "stages" / "sft" / "DONE").read_text())
    assert sealed["fingerprint"]["values"]["retention.replay"] == 0.3


def test_infer_composes_any_prefix_of_the_chain(pipeline: Path) -> None:
    """--upto doica on Sora's run is Doica's model; --compare-phases answers as each phase left it."""
    import torch

    from conftest import run_nova
    from nova.errors import NovaError
    from nova.infer import load_model

    out = pipeline / "out"
    upto = load_model(out / "sora", upto="doica")
    doica = load_model(out / "doica")
    sora = load_model(out / "sora")
    assert upto.adapter_names == ["doica"] and sora.adapter_names == ["doica", "sora"]
    ids = torch.tensor([[5, 9, 13, 17, 21]])
    with torch.no_grad():
        assert torch.equal(upto.model(input_ids=ids).logits, doica.model(input_ids=ids).logits)
        views = dict(sora.phase_views())
        assert list(views) == ["base", "doica", "sora"]
        with views["doica"]():
            assert torch.equal(sora.model(input_ids=ids).logits, doica.model(input_ids=ids).logits)
    with pytest.raises(NovaError, match="no such phase"):
        load_model(out / "sora", upto="nope")
    result = run_nova("infer", "--model", str(out / "sora"), "--compare-phases", "--prompt", "Salut",
                      "--max-new-tokens", "4", "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert list(record["phases"]) == ["base", "doica", "sora"] and record["answer"] == record["phases"]["sora"]
