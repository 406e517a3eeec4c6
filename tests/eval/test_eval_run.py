"""``nova eval`` on a real (tiny) pipeline: the base, each phase and a GGUF export on the same tasks,
stored in eval.json; and a gate that stops the pipeline when a phase drops a task past its limit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ROOT, run_nova
from nova.config import load_yaml_config
from nova.console import RunLog
from nova.eval.gates import GateFailed
from nova.eval.run import EvalRequest, evaluate
from nova.train.pipeline import run_config

TRAIN = ("{max_steps: %d, micro_batch_size: 2, gradient_accumulation_steps: 1, learning_rate: %s, warmup_steps: 0, "
         "logging_steps: 1, eval_steps: 100, save_steps: 100, gradient_checkpointing: false}")


def pipeline_text(out: Path, model: Path, logs: Path, sora_eval: str = "", third: bool = False) -> str:
    text = f"""
output_dir: {out}
phases:
  - name: doica
    model: {{base: {model}, quantization: nf4}}
    data: {{datasets: [{{path: {ROOT / "data" / "doica_short_ro.jsonl"}, max_samples: 30}}], eval_split: 0.2,
            max_length: 96}}
    training: {TRAIN % (3, "5.0e-3")}
    logs_dir: {logs}
  - name: sora
    start_from: doica
    logs_dir: {logs}
    {sora_eval}
    stages:
      - method: sft
        data: {{datasets: [{{path: {ROOT / "data" / "sora_short_en.jsonl"}, max_samples: 30}}], eval_split: 0.2,
                max_length: 96}}
        training: {TRAIN % (4, "3.0e-2")}
      - method: dpo
        data: {{datasets: [{{path: {ROOT / "data" / "sora_dpo_identity.jsonl"}}}], eval_split: 0.15}}
        dpo: {{beta: 0.1, max_prompt_length: 48, max_completion_length: 32}}
        training: {TRAIN % (2, "1.0e-2")}
"""
    if third:
        text += f"""  - name: third
    start_from: sora
    logs_dir: {logs}
    data: {{datasets: [{{path: {ROOT / "data" / "sora_short_en.jsonl"}, max_samples: 8}}], eval_split: 0,
            max_length: 96}}
    training: {TRAIN % (1, "1.0e-3")}
"""
    return text


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("evalpipe")
    config = tmp / "pipeline.yaml"
    config.write_text(pipeline_text(tmp / "out", tiny_model_dir, tmp / "logs"))
    run_config(load_yaml_config(config), log=RunLog(tmp / "log.txt"))
    return tmp


@pytest.fixture(scope="module")
def gguf(trained: Path) -> Path:
    """Sora merged (fp32) and exported as an f32 GGUF, as nova merge and nova export write them."""
    from nova.export.gguf_export import export_gguf
    from nova.merge.inputs import MergeRequest
    from nova.merge.run import merge_run

    merged = merge_run(MergeRequest(trained / "out" / "sora", dtype="fp32")).out_dir
    return export_gguf(Path(merged), trained / "out" / "sora-f32.gguf", outtype="f32").path


def user_task(tmp: Path) -> Path:
    """A user's JSONL task: greedy answers matched with contains (the tiny model answers with noise)."""
    path = tmp / "mine.jsonl"
    rows = [{"prompt": "Care este capitala Romaniei?", "answer": "Bucuresti", "match": "contains",
             "max_new_tokens": 8},
            {"prompt": "What is the capital of France?", "answer": "Paris", "max_new_tokens": 8},
            {"prompt": "Say yes.", "answer": "y.*", "match": "regex", "max_new_tokens": 4}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_table_of_base_phases_and_gguf_stored_in_the_runs(trained: Path, gguf: Path) -> None:
    out = trained / "out"
    mine = user_task(trained)
    lines: list[str] = []
    results = evaluate(EvalRequest(out, ["xquad_ro", "hellaswag", "holdout", "preference", str(mine)],
                                   ["base", "doica", "sora", str(gguf)], limit=4), say=lines.append)
    names = [m["name"] for m in results["models"]]
    assert names == ["base", "doica", "sora", gguf.name]
    columns = ["xquad_ro", "hellaswag", "holdout:doica", "holdout:sora", "preference", "mine"]
    assert list(results["tasks"]) == columns
    assert results["tasks"]["xquad_ro"]["items"] == 4 and results["tasks"]["preference"]["items"] == 4
    assert results["columns"]["holdout"] == ["holdout:doica", "holdout:sora"]
    for row in results["models"]:
        assert set(row["scores"]) == set(columns), row
    scores = {m["name"]: m["scores"] for m in results["models"]}
    # Phases are different models: training moved Doica's own holdout loss off the base's.
    assert scores["doica"]["holdout:doica"] < scores["base"]["holdout:doica"]
    # The f32 GGUF of Sora's merged weights, in llama.cpp, scores what Sora's composition scores.
    assert scores[gguf.name]["holdout:sora"] == pytest.approx(scores["sora"]["holdout:sora"], rel=2e-3)
    assert scores[gguf.name]["holdout:doica"] == pytest.approx(scores["sora"]["holdout:doica"], rel=2e-3)
    parents = {m["name"]: m["parent"] for m in results["models"]}
    assert parents == {"base": None, "doica": "base", "sora": "doica", gguf.name: "sora"}
    # Stored: the pipeline's eval.json and each phase's (its chain's rows), shown in the model card.
    stored = json.loads((out / "eval.json").read_text())
    assert [m["name"] for m in stored["models"]] == names
    doica = json.loads((out / "doica" / "eval.json").read_text())
    assert [m["name"] for m in doica["models"]] == ["base", "doica"]
    sora = json.loads((out / "sora" / "eval.json").read_text())
    assert [m["name"] for m in sora["models"]] == names
    card = (out / "sora" / "adapter" / "README.md").read_text()
    assert "## Task scores" in card and "holdout:doica" in card


def test_stored_scores_are_reused_for_the_same_weights(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = trained / "out"
    first = evaluate(EvalRequest(out, ["xquad_ro"], ["base", "doica"], limit=3), say=lambda _: None)

    def fail(*_: object) -> None:
        raise AssertionError("scored again")

    monkeypatch.setattr("nova.eval.score.score", fail)
    again = evaluate(EvalRequest(out, ["xquad_ro"], ["base", "doica"], limit=3), say=lambda _: None)
    assert [m["scores"] for m in again["models"]] == [m["scores"] for m in first["models"]]


def test_cli_prints_the_table_and_json(trained: Path) -> None:
    out = trained / "out"
    result = run_nova("eval", str(out), "--tasks", "xquad_ro,preference", "--limit", "3", timeout=900)
    assert result.returncode == 0, result.stderr
    table = result.stdout.splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("model "))
    assert "xquad_ro (acc, n=3)" in table[header] and "preference (acc, n=3)" in table[header]
    assert [line.split()[0] for line in table[header + 1: header + 4]] == ["base", "doica", "sora"]
    assert "(b " in table[header + 3]  # sora's cells carry their change against the base
    as_json = run_nova("eval", str(out), "--tasks", "xquad_ro", "--limit", "3", "--json", timeout=900)
    data = json.loads(as_json.stdout)
    assert [m["name"] for m in data["models"]] == ["base", "doica", "sora"]
    assert all(isinstance(m["scores"]["xquad_ro"], float) for m in data["models"])
    status = run_nova("status", str(out))
    assert "xquad_ro" in status.stdout and "preference" in status.stdout


@pytest.mark.slow  # trains a second pipeline (three phases), then runs it twice more
def test_a_gate_stops_the_pipeline_before_the_next_phase(tmp_path: Path, tiny_model_dir: Path) -> None:
    # Sora trains on English at a high rate: Doica's holdout loss rises. max_drop 0 against the phase
    # before makes that rise a failure, so the third phase must not run.
    gate = "eval: {limit: 8, tasks: [{task: holdout, max_drop: 0.0}]}"
    config = tmp_path / "pipeline.yaml"
    config.write_text(pipeline_text(tmp_path / "out", tiny_model_dir, tmp_path / "logs", gate, third=True))
    with pytest.raises(GateFailed) as caught:
        run_config(load_yaml_config(config), log=RunLog(tmp_path / "log.txt"))
    message = caught.value.lines()[0]
    assert "phase 'sora' failed its eval gate: holdout:doica loss" in message
    assert "before phase 'third'" in message and "--force-gates" in message
    assert not (tmp_path / "out" / "third" / "COMPLETE").exists()
    state = json.loads((tmp_path / "out" / "pipeline.json").read_text())
    assert state["phases"]["sora"]["gate"]["passed"] is False
    # A re-run skips the finished phases but checks the gate again: still stopped.
    with pytest.raises(GateFailed):
        run_config(load_yaml_config(config), log=RunLog(tmp_path / "log2.txt"))
    assert not (tmp_path / "out" / "third" / "COMPLETE").exists()
    # --force-gates goes on, and says so in pipeline.json and eval.json.
    run_config(load_yaml_config(config), log=RunLog(tmp_path / "log3.txt"), force_gates=True)
    assert (tmp_path / "out" / "third" / "COMPLETE").exists()
    state = json.loads((tmp_path / "out" / "pipeline.json").read_text())
    assert state["phases"]["sora"]["gate"] == {**state["phases"]["sora"]["gate"], "passed": False, "forced": True}
    gates = json.loads((tmp_path / "out" / "sora" / "eval.json").read_text())["gates"]
    assert any(g["task"] == "holdout:doica" and g["forced"] for g in gates)
    status = run_nova("status", str(tmp_path / "out"))
    assert "eval gate:  FAILED, continued with --force-gates: holdout:doica" in status.stdout


def test_lm_eval_task_runs_on_the_composition_offline(trained: Path) -> None:
    """lm-evaluation-harness' own task machinery (the shipped YAML over a local file) on each phase, unmerged."""
    results = evaluate(EvalRequest(trained / "out", ["lm:hellaswag_nova"], ["base", "sora"], limit=4),
                       say=lambda _: None)
    spec = results["tasks"]["lm:hellaswag_nova"]
    assert spec["metric"] == "acc_norm" and spec["items"] == 4
    values = [m["scores"]["lm:hellaswag_nova"] for m in results["models"]]
    assert all(v in (0.0, 0.25, 0.5, 0.75, 1.0) for v in values)


def test_export_eval_task_scores_the_model_and_its_gguf(trained: Path, gguf: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from nova.cli.export_cmd import export

    merged = trained / "out" / "sora-merged"
    export(out=trained / "check.gguf", model=merged, run=None, fmt="gguf", outtype="f32", force=False,
           eval_task="xquad_ro")
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model "))
    assert lines[header + 1].split()[0] == "sora-merged" and lines[header + 2].split()[0] == "check.gguf"
    scores = [float(line.split()[1]) for line in lines[header + 1: header + 3]]
    assert scores[0] == scores[1]  # f32 in llama.cpp picks the same choices as the merged model
