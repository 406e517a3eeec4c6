"""Model cards: hub front matter, the chain, data with counts and licenses, settings, eval and forgetting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from run_fixtures import chained_runs


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("card")
    (root / "data").mkdir()
    (root / "data" / "README.md").write_text(
        "# data\n\n| file | format | records | license |\n|---|---|---|---|\n"
        "| first.jsonl | messages | 12 | Apache-2.0 |\n| second.jsonl | messages | 12 | CC BY-SA 4.0 |\n")
    return chained_runs(root, tiny_model_dir)


def _split(card: str) -> tuple[dict[str, object], str]:
    _, meta, body = card.split("---\n", 2)
    return yaml.safe_load(meta), body


def test_card_of_a_chained_adapter(runs: dict[str, Path], tiny_model_dir: Path) -> None:
    from nova.runs import read_run
    from nova.runs.card import render

    meta, body = _split(render(read_run(runs["second"]), "adapter"))
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-generation"
    assert {"nova", "lora", "peft", "sft"} <= set(meta["tags"])  # type: ignore[arg-type]
    assert "base_model" not in meta  # a local directory is not a hub id: not claimed as one
    assert "## Requires the earlier adapters" in body and "`first`" in body
    assert "nova export --format peft --run second --out DIR" in body
    assert "| first.jsonl | messages 12 | 12 | 11 | 10 / 1 | Apache-2.0 |" in body
    assert "| second.jsonl | messages 12 | 12 | 11 | 10 / 1 | CC BY-SA 4.0 |" in body
    assert "| first/sft | 2.5000 | 2.2500 |" in body and "| second/sft | 2.5000 | 3.2500 |" in body
    assert "learning_rate 0.0002" in body
    assert 'model.base_model.set_adapter(["first", "second"])' in body
    assert "[More Information Needed]" not in body and "TODO" not in body
    assert body.isascii() and str(tiny_model_dir.parent) not in body  # no machine paths in a shared card


def test_forgetting_table_once_pipeline_json_has_it(runs: dict[str, Path]) -> None:
    from nova.runs import read_run
    from nova.runs.card import render

    pipeline = runs["second"].parent / "pipeline.json"
    assert "Forgetting" not in render(read_run(runs["second"]), "merged")
    pipeline.write_text(json.dumps({"phases": {"first": {"status": "done"}, "second": {
        "status": "done", "forgetting": {"first": {"eval_loss_before": 2.25, "eval_loss_after": 2.5}}}}}))
    try:
        meta, body = _split(render(read_run(runs["second"]), "merged"))
    finally:
        pipeline.unlink()
    assert meta["library_name"] == "transformers"
    assert "| first | 2.2500 | 2.5000 | +0.2500 |" in body
    assert "## Requires" not in body


def test_license_from_the_base_card_and_hub_ids(tmp_path: Path) -> None:
    from nova.runs.card_facts import base_license, data_license, hub_id

    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: [en]\n---\n# model\n")
    assert base_license(str(tmp_path)) == "apache-2.0"
    assert hub_id("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id(str(tmp_path)) is None and hub_id("smollm2") is None
    (tmp_path / "d.jsonl").write_text("{}\n")
    assert data_license(str(tmp_path / "d.jsonl")) == "apache-2.0"
    assert data_license(str(tmp_path / "nowhere" / "x.jsonl")) is None


def test_run_cards_replace_peft_template_and_mark_the_chain(runs: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from nova.runs import read_run
    from nova.runs.card import write_card
    from nova.runs.card_usage import REQUIRES_KEY, mark_requires

    copy = tmp_path / "pipe"
    shutil.copytree(runs["second"].parent, copy)
    config = copy / "second" / "config.yaml"
    config.write_text(config.read_text().replace(str(runs["first"]), str(copy / "first")))
    record = read_run(copy / "second")
    (copy / "second" / "stages" / "sft" / "adapter").mkdir()
    shutil.copy(copy / "second" / "adapter" / "adapter_config.json", copy / "second" / "stages" / "sft" / "adapter")
    write_card(record.run.adapter, record, kind="adapter")  # as the phase writes them when it finishes
    write_card(record.run.stage_adapter("sft"), record, kind="stage", stage="sft")
    mark_requires(record.run.adapter, record)
    assert "[More Information Needed]" not in (record.run.adapter / "README.md").read_text()
    assert "after its stage sft" in (record.run.stage_adapter("sft") / "README.md").read_text()
    marked = json.loads((record.run.adapter / "adapter_config.json").read_text())
    assert marked[REQUIRES_KEY]["adapters"] == ["first"]


def test_forgetting_and_holdout_loss_from_retention_json(runs: dict[str, Path]) -> None:
    from nova.runs import RunDir, read_run
    from nova.runs.card import render
    from nova.runs.retention import write_retention

    run = RunDir(runs["second"])
    forgetting = {"first": {"eval_loss_before": 2.0, "eval_loss_after": 2.2, "change": 0.1},
                  "retention:data/keep.jsonl": {"eval_loss_before": 1.5, "eval_loss_after": 1.25, "change": -0.17}}
    write_retention(run, "second", {"second": {"eval_loss": 1.125}}, {}, forgetting, [])
    try:
        _, body = _split(render(read_run(runs["second"]), "adapter"))
    finally:
        run.retention.unlink()
    assert "| first | 2.0000 | 2.2000 | +0.2000 |" in body
    assert "| retention set data/keep.jsonl | 1.5000 | 1.2500 | -0.2500 |" in body
    assert "| 2 | second | sft | 4 | 8 |" in body and "| 1.1250 |" in body  # the phase's own holdout loss


def test_every_method_shows_its_own_settings(tmp_path: Path) -> None:
    """The settings a card shows come from each method's spec: KTO, ORPO and SimPO stages show theirs too."""
    from nova.config.schema import ModelConfig, PhaseConfig
    from nova.runs import RunDir, read_run
    from nova.runs.card_facts import phase_facts
    from nova.runs.record import resolved_config, write_run_config

    stages = [{"method": "sft"}, {"method": "kto", "kto": {"beta": 0.3, "undesirable_weight": 1.2}},
              {"method": "orpo", "orpo": {"beta": 0.4}}, {"method": "simpo", "simpo": {"gamma": 0.7}},
              {"method": "dpo", "dpo": {"beta": 0.2}}]
    phase = PhaseConfig.model_validate({"name": "p", "model": {"base": "m"}, "stages": stages})
    run = RunDir(tmp_path / "p")
    run.path.mkdir()
    write_run_config(run, resolved_config(phase, ModelConfig(base="m"), []))
    shown = [s.settings for s in phase_facts(read_run(run.path)).stages]
    assert not any(k.startswith(("kto_", "orpo_", "simpo_", "dpo_")) for k in shown[0])
    assert shown[1]["kto_beta"] == 0.3 and shown[1]["kto_undesirable_weight"] == 1.2
    assert shown[1]["kto_loss_type"] == "kto" and shown[2]["orpo_beta"] == 0.4
    assert (shown[3]["simpo_beta"], shown[3]["simpo_gamma"], shown[3]["simpo_nll_weight"]) == (2.0, 0.7, 0.0)
    assert (shown[4]["dpo_beta"], shown[4]["dpo_loss_type"]) == (0.2, "sigmoid")
