"""Configs are small: what expands, nests or counts beyond any real config is refused with its place."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from nova.config import load_yaml_config
from nova.config.base import Section
from nova.config.data_schema import DataConfig, DatasetSpec
from nova.config.monitor_schema import MonitorConfig
from nova.config.safe_yaml import MAX_VALUES
from nova.config.schema import LoraConfig, ModelConfig, PhaseConfig, PipelineConfig, TrainingConfig
from nova.errors import ConfigError
from nova.methods.dpo import DPOConfig

SECTIONS: list[type[Section]] = [ModelConfig, LoraConfig, TrainingConfig, DPOConfig, DataConfig, DatasetSpec,
                                 MonitorConfig, PhaseConfig, PipelineConfig]


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    f = tmp_path / "d.jsonl"
    f.write_text('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n')
    return f


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_anchors_and_merge_keys_still_work(tmp_path: Path, data_file: Path) -> None:
    text = (f"output_dir: {tmp_path / 'out'}\n"
            "phases:\n"
            "  - name: first\n"
            "    model: {base: some/model}\n"
            f"    data: &data {{datasets: [{{path: {data_file}}}], eval_split: 0}}\n"
            "    training: &schedule {max_steps: 10, learning_rate: 1.0e-4, seed: 7}\n"
            "  - name: second\n"
            "    start_from: first\n"
            "    data: *data\n"
            "    training:\n"
            "      <<: *schedule\n"
            "      max_steps: 20\n")
    cfg = load_yaml_config(_write(tmp_path, text)).config
    assert isinstance(cfg, PipelineConfig)
    second = cfg.phase("second").stages[0]
    assert (second.training.max_steps, second.training.learning_rate, second.training.seed) == (20, 1e-4, 7)
    assert second.data.datasets[0].path == str(data_file)


def test_problem_under_a_merge_key_still_names_a_line(tmp_path: Path, data_file: Path) -> None:
    text = (f"name: t\nmodel: {{base: some/model}}\ndata: {{datasets: [{{path: {data_file}}}]}}\n"
            "defaults: &d {learning_rat: 1.0}\n"
            "training:\n  <<: *d\n")
    with pytest.raises(ConfigError) as err:
        load_yaml_config(_write(tmp_path, text))
    assert "training.learning_rat" in str(err.value) and f"{tmp_path / 'c.yaml'}:" in str(err.value)


def test_alias_expansion_is_counted_once_per_node(tmp_path: Path) -> None:
    # 10 * 10 * 10 * 10 * 10 = 100,000 leaves from a few hundred bytes: just over the limit
    lines = ["a: &a [" + ", ".join(["1"] * 10) + "]"]
    for prev, name in zip("abcd", "bcde", strict=True):
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 10)}]")
    with pytest.raises(ConfigError, match=f"expands to more than {MAX_VALUES} values"):
        load_yaml_config(_write(tmp_path, "\n".join(lines) + "\n"))


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="a cycle"):
        load_yaml_config(_write(tmp_path, "name: &a [*a]\n"))


def test_config_that_is_not_a_regular_file_or_too_large_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a regular file"):
        load_yaml_config("/dev/zero")
    big = _write(tmp_path, "name: t\n" + "#" * (2 * 1024 * 1024) + "\n")
    with pytest.raises(ConfigError, match="more than 1048576 bytes"):
        load_yaml_config(big)


def test_a_bad_value_too_long_to_repr_is_shown_short(tmp_path: Path, data_file: Path) -> None:
    path = _write(tmp_path, f"name: t\nmodel: {{base: some/model}}\ndata: {{datasets: [{{path: {data_file}}}]}}\n"
                            f"smoke_prompts: {'x' * 500}\n")
    with pytest.raises(ConfigError) as err:
        load_yaml_config(path)
    assert "... (502 characters)" in str(err.value) and len(str(err.value)) < 400  # repr adds the quotes


def _float_fields(section: type[BaseModel]) -> list[str]:
    def is_float(annotation: object) -> bool:
        return annotation is float or float in typing.get_args(annotation)

    return [name for name, field in section.model_fields.items() if is_float(field.annotation)]


@pytest.mark.parametrize("section", SECTIONS, ids=lambda s: s.__name__)
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")], ids=["inf", "-inf", "nan"])
def test_no_float_of_the_schema_accepts_inf_or_nan(section: type[Section], value: float) -> None:
    for name in _float_fields(section):
        with pytest.raises(ValidationError) as err:
            section.model_validate({name: value}, context={"recorded": True})
        kinds = {e["type"] for e in err.value.errors() if e["loc"][:1] == (name,)}  # a union adds its branch
        assert "finite_number" in kinds, (section.__name__, name, err.value.errors())


def test_the_schema_has_float_fields_to_check() -> None:
    assert sum(len(_float_fields(s)) for s in SECTIONS) >= 15


@pytest.mark.parametrize(("snippet", "key"), [
    ("training:\n  learning_rate: .inf\n", "training.learning_rate"),
    ("training:\n  num_epochs: .nan\n", "training.num_epochs"),
    ("training:\n  weight_decay: 1e999\n", "training.weight_decay"),  # YAML reads it as inf
    ("dpo:\n  beta: .inf\n", "dpo.beta"),
    ("training:\n  max_steps: 100000000000000000000000000\n", "training.max_steps"),
    ("training:\n  micro_batch_size: 1000000\n", "training.micro_batch_size"),
    ("training:\n  gradient_accumulation_steps: 1000000\n", "training.gradient_accumulation_steps"),
    ("training:\n  warmup_steps: 100000000000\n", "training.warmup_steps"),
    ("training:\n  save_steps: 100000000000\n", "training.save_steps"),
    ("training:\n  eval_steps: 100000000000\n", "training.eval_steps"),
    ("training:\n  logging_steps: 100000000000\n", "training.logging_steps"),
    ("training:\n  gpu: -1\n", "training.gpu"),
    ("training:\n  seed: -1\n", "training.seed"),
    ("data:\n  max_length: 100000000\n", "data.max_length"),
    ("lora:\n  alpha: 100000000\n", "lora.alpha"),
], ids=lambda v: v if isinstance(v, str) and "\n" not in v else None)
def test_absurd_values_are_refused_with_their_key(tmp_path: Path, data_file: Path, snippet: str, key: str) -> None:
    text = f"name: t\nmodel:\n  base: some/model\ndata:\n  datasets:\n    - path: {data_file}\n"
    if snippet.startswith("data:"):
        text = text.replace("data:\n", snippet, 1)
    else:
        text += snippet
    with pytest.raises(ConfigError) as err:
        load_yaml_config(_write(tmp_path, text))
    assert key in str(err.value)


def test_gpu_index_and_auto_still_load(tmp_path: Path, data_file: Path) -> None:
    base = f"name: t\nmodel:\n  base: some/model\ndata:\n  datasets:\n    - path: {data_file}\n"
    for value, expected in (("auto", "auto"), ("0", 0), ("3", 3)):
        cfg = load_yaml_config(_write(tmp_path, base + f"training:\n  gpu: {value}\n")).config
        assert isinstance(cfg, PhaseConfig) and cfg.stages[0].training.gpu == expected


@pytest.mark.parametrize(("value", "message"), [
    ("[" * 5000 + "]" * 5000, "nested too deeply"),
    ("&a [*a]", "a cycle"),
    ("9" * 5000, "an integer of 5000 characters"),
])
def test_set_values_are_bounded_like_files(tmp_path: Path, data_file: Path, value: str, message: str) -> None:
    path = _write(tmp_path, f"name: t\nmodel:\n  base: some/model\ndata:\n  datasets:\n    - path: {data_file}\n")
    with pytest.raises(ConfigError, match=message) as err:
        load_yaml_config(path, [f"smoke_prompts={value}"])
    assert err.value.problems[0].where.startswith("--set smoke_prompts=")
    assert load_yaml_config(path, ["smoke_prompts=[&p hi, *p]"]).config.smoke_prompts == ["hi", "hi"]


def test_a_long_set_value_is_shown_cut(tmp_path: Path, data_file: Path) -> None:
    path = _write(tmp_path, f"name: t\nmodel:\n  base: some/model\ndata:\n  datasets:\n    - path: {data_file}\n")
    with pytest.raises(ConfigError) as err:
        load_yaml_config(path, ["smoke_prompts=" + "[" * 5000 + "]" * 5000])
    assert len(str(err.value)) < 300
