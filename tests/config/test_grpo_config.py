"""The grpo: section: its rewards, whole groups per step, clear errors, and its place in the fingerprint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from nova.config import load_yaml_config
from nova.config.schema import PhaseConfig
from nova.errors import ConfigError
from nova.plan import make_plan

REWARDS = [{"name": "exact_match", "field": "answer"}]


def config(tmp_path: Path, grpo: dict[str, Any], training: dict[str, Any] | None = None,
           **extra: Any) -> Path:
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "What is 1 + 1?", "answer": "2"}\n')
    text = {"name": "g", "model": {"base": "some/model"}, "method": "grpo", "data": {"datasets": [{"path": str(data)}]},
            "grpo": grpo, "training": training or {"micro_batch_size": 4, "gradient_accumulation_steps": 2},
            "output_dir": str(tmp_path / "run"), **extra}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(text))
    return path


def error(tmp_path: Path, grpo: dict[str, Any], training: dict[str, Any] | None = None) -> str:
    with pytest.raises(ConfigError) as err:
        load_yaml_config(config(tmp_path, grpo, training))
    text = str(err.value)
    assert text.isascii()
    return text


def test_a_grpo_phase_loads_with_its_settings_and_defaults(tmp_path: Path) -> None:
    cfg = load_yaml_config(config(tmp_path, {"rewards": REWARDS, "num_generations": 2})).config
    assert isinstance(cfg, PhaseConfig)
    stage = cfg.stage_list[0]
    assert stage.method == "grpo" and stage.method_settings is stage.grpo
    g = stage.grpo
    assert (g.num_generations, g.beta, g.temperature, g.use_vllm) == (2, 0.0, 1.0, False)  # beta: TRL 1.x's 0.0
    assert g.reference_fields == ("answer",)
    assert stage.length_settings is g  # the data's prompt limit comes from grpo.max_prompt_length


def test_num_generations_must_divide_the_completions_of_a_step(tmp_path: Path) -> None:
    text = error(tmp_path, {"rewards": REWARDS, "num_generations": 3})
    assert "grpo.num_generations (3) must divide" in text and "4 x 2 = 8" in text
    assert "num_generations 8 or micro_batch_size 3" in text  # a way out
    error(tmp_path, {"rewards": REWARDS, "num_generations": 1})  # a group of one has no advantage


def test_a_grpo_stage_needs_a_reward(tmp_path: Path) -> None:
    assert "method grpo needs grpo.rewards" in error(tmp_path, {})


@pytest.mark.parametrize(("reward", "message"), [
    ({"name": "exact_match", "file": "x.py", "function": "f"}, "either name"),
    ({"weight": 2.0}, "either name"),
    ({"name": "regex"}, "reward regex needs pattern"),
    ({"name": "regex", "pattern": "("}, "is not a valid regular expression"),
    ({"name": "length"}, "reward length needs target"),
    ({"name": "exact_match", "pattern": "x"}, "reward exact_match takes no pattern"),
    ({"name": "think_format", "field": "answer"}, "reward think_format takes no field"),
    ({"name": "exact_match", "field": "completion"}, "record field 'completion' cannot be passed"),
    ({"name": "bleu"}, "grpo.rewards.0.name"),
    ({"file": "missing_rewards.py", "function": "f"}, "reward file not found: missing_rewards.py"),
    ({"file": "rewards.txt", "function": "f"}, "is not a .py file"),
])
def test_a_bad_reward_entry_says_what_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             reward: dict[str, Any], message: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.py").write_text("")
    assert message in error(tmp_path, {"rewards": [reward]})


def test_a_reward_file_needs_a_function_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rewards.py").write_text("def correct(prompts, completions, **kw):\n    return []\n")
    assert "needs function" in error(tmp_path, {"rewards": [{"file": "rewards.py"}]})
    ok = load_yaml_config(config(tmp_path, {"rewards": [{"file": "rewards.py", "function": "correct",
                                                          "fields": ["answer"]}]})).config
    assert ok.stage_list[0].grpo.reference_fields == ("answer",)


def test_grpo_settings_are_part_of_the_fingerprint(tmp_path: Path) -> None:
    from nova.runs.fingerprint import differences
    from nova.train.fingerprint import FingerprintInputs, phase_fingerprints

    def fingerprint(**grpo: Any):  # type: ignore[no-untyped-def]
        planned = make_plan(load_yaml_config(config(tmp_path, {"rewards": REWARDS, **grpo}))).phases[0]
        return phase_fingerprints(planned, FingerprintInputs("id", "float32", ["key"], []))[0]

    base = fingerprint()
    assert base.values["method"] == "grpo" and base.values["grpo.num_generations"] == 4
    for change, key in (({"beta": 0.04}, "grpo.beta"), ({"temperature": 0.7}, "grpo.temperature"),
                        ({"num_generations": 2}, "grpo.num_generations"),
                        ({"max_completion_length": 64}, "grpo.max_completion_length"),
                        ({"rewards": [{**REWARDS[0], "weight": 2.0}]}, "grpo.rewards")):
        other = fingerprint(**change)
        assert other.digest != base.digest
        assert [k for k, _, _ in differences(base, other)] == [key]
