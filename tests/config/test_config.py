"""Config loading: strict keys with suggestions, typed values, overrides, shipped configs, reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ROOT
from nova.config import PhaseConfig, PipelineConfig, load_yaml_config
from nova.config.reference import reference_lines
from nova.errors import ConfigError


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def minimal(data_file: Path) -> str:
    return f"name: t\nmodel:\n  base: some/model\ndata:\n  datasets:\n    - path: {data_file}\n"


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    f = tmp_path / "d.jsonl"
    f.write_text('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n')
    return f


def test_defaults_follow_the_proven_values(tmp_path: Path, data_file: Path) -> None:
    cfg = load_yaml_config(write(tmp_path, minimal(data_file))).config
    assert isinstance(cfg, PhaseConfig)
    assert (cfg.model.quantization, cfg.model.double_quant) == ("nf4", True)
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (8, 16, 0.05)
    t = cfg.stages[0].training  # a single stage written at the phase level is stages[0]
    assert (t.learning_rate, t.lr_scheduler) == (2e-4, "cosine")
    assert (t.micro_batch_size, t.gradient_accumulation_steps) == (4, 4)
    assert (t.seed, t.eval_steps, t.save_steps, t.save_total_limit) == (42, 100, 100, 3)
    assert t.warmup_ratio > 0 and cfg.stages[0].data.eval_split == 0.1
    assert t.effective_batch_size == 16


def test_unknown_key_suggests_the_right_one(tmp_path: Path, data_file: Path) -> None:
    path = write(tmp_path, minimal(data_file) + "training:\n  learning_rat: 1e-4\n")
    with pytest.raises(ConfigError) as err:
        load_yaml_config(path)
    text = str(err.value)
    assert "training.learning_rat" in text and "did you mean 'learning_rate'" in text
    assert f"{path}:8" in text  # the line of the bad key


@pytest.mark.parametrize(("snippet", "key"), [
    ("lora:\n  r: 0\n", "lora.r"),
    ("lora:\n  dropout: 1.0\n", "lora.dropout"),
    ("training:\n  learning_rate: 0\n", "training.learning_rate"),
    ("training:\n  micro_batch_size: -2\n", "training.micro_batch_size"),
    ("training:\n  micro_batch_size: four\n", "training.micro_batch_size"),
])
def test_out_of_range_and_wrong_types_name_the_key(tmp_path: Path, data_file: Path, snippet: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_yaml_config(write(tmp_path, minimal(data_file) + snippet))
    assert key in str(err.value)


def test_all_problems_are_reported_together(tmp_path: Path, data_file: Path) -> None:
    path = write(tmp_path, minimal(data_file) + "lora:\n  r: -1\n  alpah: 3\ntraining:\n  seed: x\n")
    with pytest.raises(ConfigError) as err:
        load_yaml_config(path)
    assert len(err.value.problems) == 3


def test_missing_data_file_names_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, minimal(tmp_path / "nope.jsonl"))
    with pytest.raises(ConfigError) as err:
        load_yaml_config(path)
    assert "data.datasets.0.path" in str(err.value) and "nope.jsonl" in str(err.value)


def test_set_overrides_any_key_and_is_validated(tmp_path: Path, data_file: Path) -> None:
    path = write(tmp_path, minimal(data_file))
    cfg = load_yaml_config(path, ["lora.r=32", "training.max_steps=7", "data.datasets.0.max_samples=5"]).config
    stage = cfg.stages[0]
    assert cfg.lora.r == 32 and stage.training.max_steps == 7 and stage.data.datasets[0].max_samples == 5
    with pytest.raises(ConfigError, match=r"lora\.rank"):
        load_yaml_config(path, ["lora.rank=4"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_yaml_config(path, ["lora.r"])


def test_malformed_yaml_gives_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: t\nmodel: [unclosed\n")
    with pytest.raises(ConfigError) as err:
        load_yaml_config(path)
    assert "malformed YAML" in str(err.value) and str(path) in str(err.value)


def test_pipeline_chain_must_point_backwards(tmp_path: Path, data_file: Path) -> None:
    text = (f"phases:\n  - name: a\n    start_from: b\n    data: {{datasets: [{{path: {data_file}}}]}}\n"
            f"  - name: b\n    model: {{base: x/y}}\n")
    with pytest.raises(ConfigError, match="not an earlier phase"):
        load_yaml_config(write(tmp_path, text))


def test_pipeline_phase_files_and_overrides_by_name(tmp_path: Path, data_file: Path) -> None:
    write(tmp_path, minimal(data_file).replace("name: t", "name: first"), "first.yaml")
    text = (f"output_dir: {tmp_path / 'out'}\nphases:\n  - first.yaml\n  - name: second\n    start_from: first\n"
            f"    data: {{datasets: [{{path: {data_file}}}]}}\n")
    loaded = load_yaml_config(write(tmp_path, text, "p.yaml"), ["phases.second.lora.r=64"])
    cfg = loaded.config
    assert isinstance(cfg, PipelineConfig)
    assert [p.name for p in cfg.phases] == ["first", "second"]
    assert cfg.phase("second").lora.r == 64
    assert cfg.model_for("second").base == "some/model"
    assert [p.name for p in cfg.chain("second")] == ["first", "second"]


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml")))
def test_every_shipped_config_validates(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    loaded = load_yaml_config(path)
    assert loaded.config is not None


def test_reference_documents_every_key() -> None:
    lines = reference_lines()
    text = "\n".join(lines)
    for key in ("lora.r", "training.learning_rate", "data.datasets[].path", "stages[].dpo.beta", "model.base"):
        assert key in text
    assert all(line.isascii() for line in lines)


def test_docs_config_md_is_generated_from_the_schema() -> None:
    expected = "\n".join(reference_lines(markdown=True)) + "\n"
    assert (ROOT / "docs" / "config.md").read_text() == expected, "run: nova config --markdown > docs/config.md"


def test_docs_config_md_opens_with_a_minimal_config_that_validates(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "config.md").read_text()
    assert text.index("## A minimal config") < text.index("## Phase config")
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    data = tmp_path / "data" / "mine.jsonl"
    data.parent.mkdir()
    data.write_text('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n')
    (tmp_path / "mine.yaml").write_text(block.replace("data/mine.jsonl", str(data)))
    loaded = load_yaml_config(tmp_path / "mine.yaml")
    assert loaded.config.name == "mine" and loaded.config.stage_list[0].training.num_epochs == 2
    assert "## Steps and epochs" in text and "## The holdout" in text


def test_a_typo_of_a_stage_key_at_the_phase_level_gets_a_did_you_mean(tmp_path: Path) -> None:
    """Phase-level stage keys (training, data, method) are read as stages[0]; a typo of one still suggests it."""
    from nova.config import load_yaml_config
    from nova.errors import NovaError

    path = tmp_path / "c.yaml"
    path.write_text("name: p\nmodel: {base: x}\ntraning: {}\n", encoding="utf-8")
    with pytest.raises(NovaError) as caught:
        load_yaml_config(path)
    assert "did you mean 'training'?" in "\n".join(caught.value.lines())
