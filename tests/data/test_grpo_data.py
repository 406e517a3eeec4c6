"""Prompt-only records (GRPO): read as the model will see them, fields kept as written, bad ones at file:line."""

from __future__ import annotations

import json
import operator
from pathlib import Path
from typing import Any

import pytest

import data_fixtures
from conftest import ROOT
from data_fixtures import data_cfg, write_jsonl
from nova.data import check_data, prepare_stage_data
from nova.errors import DataError
from nova.methods.grpo import GRPOConfig, RewardSpec

tok = data_fixtures.tok  # the shared tokenizer fixture
GRPO = GRPOConfig(rewards=[RewardSpec(name="exact_match", field="answer")], max_prompt_length=64)


def problems(path: Path, grpo: GRPOConfig = GRPO, **cfg: Any) -> list[str]:
    with pytest.raises(DataError) as info:
        check_data(data_cfg(path, **cfg), method="grpo", dpo=grpo)
    return [p.render() for p in info.value.problems]


def test_prompts_are_the_generation_prompt_and_fields_keep_their_types(tmp_path: Path, tok: Any) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "What is 2 + 2?", "answer": 4},
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}],
         "answer": "Paris", "level": [1, 2]},
    ])
    data = prepare_stage_data(data_cfg(path, tmp=tmp_path), tok, method="grpo", seed=0, dpo=GRPO)
    assert data.train.column_names == ["prompt_ids", "record"]
    first, second = (json.loads(r) for r in data.train["record"])
    assert first == {"prompt": [{"role": "user", "content": "What is 2 + 2?"}], "answer": 4}  # still a number
    assert second["answer"] == "Paris" and second["level"] == [1, 2]
    text = tok.decode(data.train[0]["prompt_ids"])
    assert text.endswith("<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n")
    assert data.report.train_records == 2 and data.report.tokens.trained_tokens == 0
    assert any("prompt tokens" in line for line in data.report.lines())


def test_bad_prompt_records_name_file_line_and_are_counted(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "ok", "answer": "1"},
        {"question": "no prompt", "answer": "1"},
        {"prompt": "no answer"},
        {"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "answer": "1"},
        {"prompt": "", "answer": "1"},
    ])
    found = problems(path)
    assert found[0].startswith(f"{path}:2: missing field 'prompt'")
    assert found[1].startswith(f"{path}:3: missing field 'answer'") and "grpo.rewards" in found[1]
    assert found[2].startswith(f"{path}:4: the prompt ends with a 'assistant' turn")
    assert found[3].startswith(f"{path}:5: 'prompt' is empty")
    report = check_data(data_cfg(path, on_error="skip", skip_fail_share=1), method="grpo", dpo=GRPO)
    assert (report.read, report.kept, sum(report.skipped.values())) == (5, 1, 4)  # nothing dropped silently
    assert report.skipped["missing_field"] == 2


def test_a_field_is_required_only_when_a_reward_reads_it(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "no answer here"}])
    think = GRPOConfig(rewards=[RewardSpec(name="think_format")])
    assert check_data(data_cfg(path), method="grpo", dpo=think).kept == 1
    user = GRPOConfig(rewards=[RewardSpec(name="think_format"), RewardSpec(name="length", target=4)])
    assert check_data(data_cfg(path), method="grpo", dpo=user).kept == 1


def test_a_csv_without_a_needed_column_is_one_problem_at_its_header(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("prompt,solution\nWhat is 1 + 1?,2\n")
    found = problems(path)
    assert found == [f"{path}:1: a grpo stage needs a column 'answer'; the columns are: prompt, solution "
                     "(add it or map it with columns:)"]
    from nova.config.data_schema import DatasetSpec

    mapped = DatasetSpec(path=str(path), columns={"answer": "solution"})
    assert check_data(data_cfg(mapped), method="grpo", dpo=GRPO).kept == 1


def test_long_prompts_keep_their_end_and_are_counted(tmp_path: Path, tok: Any) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "word " * 200 + "What is 3 + 4?", "answer": "7"},
                                              {"prompt": "1?", "answer": "1"}])
    short = GRPO.changed(max_prompt_length=32)
    data = prepare_stage_data(data_cfg(path, tmp=tmp_path), tok, method="grpo", seed=0, dpo=short)
    ids = data.train[0]["prompt_ids"]
    assert len(ids) == 32 and tok.decode(ids).endswith("<|im_start|>assistant\n")
    assert data.report.prompt_truncated == 1 and data.report.truncated == 1
    dropped = check_data(data_cfg(path, overlong="drop"), method="grpo", tokenizer=tok, dpo=short)
    assert (dropped.dropped_too_long, dropped.train_records) == (1, 1)


def test_other_formats_cannot_train_a_grpo_stage_and_prompts_cannot_train_sft(tmp_path: Path) -> None:
    from nova.config.data_schema import DatasetSpec

    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi", "answer": "1"}])
    spec = DatasetSpec(path=str(path), format="messages")
    with pytest.raises(DataError) as info:
        check_data(data_cfg(spec), method="grpo", dpo=GRPO)
    assert "cannot train a grpo stage" in info.value.problems[0].render()
    with pytest.raises(DataError) as info:
        check_data(data_cfg(DatasetSpec(path=str(path), format="prompt")), method="sft")
    assert "use method: grpo for prompt-only records" in info.value.problems[0].render()


def test_the_required_fields_are_part_of_the_cache_key(tmp_path: Path, tok: Any) -> None:
    from nova.data import data_key

    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi", "answer": "1", "hint": "x"}])
    cfg = data_cfg(path, tmp=tmp_path)
    other = GRPOConfig(rewards=[RewardSpec(name="exact_match", field="hint")], max_prompt_length=64)
    assert data_key(cfg, tok, method="grpo", seed=0, dpo=GRPO) != data_key(cfg, tok, method="grpo", seed=0, dpo=other)


def test_the_shipped_arithmetic_set_is_valid_and_answers_are_right(tok: Any) -> None:
    path = ROOT / "data" / "arithmetic.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 64 and len({r["prompt"] for r in rows}) == 64 and path.read_text().isascii()
    ops = {"+": operator.add, "-": operator.sub, "*": operator.mul}
    for row in rows:
        a, op, b = row["prompt"].removeprefix("What is ").split("?")[0].split()
        assert str(ops[op](int(a), int(b))) == row["answer"]
    report = check_data(data_cfg(path), method="grpo", tokenizer=tok, dpo=GRPO)
    assert (report.read, report.kept, report.deduplicated) == (64, 64, 0)


def test_preview_shows_the_prompt_as_the_model_sees_it_and_the_reward_fields(tmp_path: Path, tok: Any) -> None:
    from nova.data.preview import preview

    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "What is 2 + 2?", "answer": "4"}])
    lines = preview(data_cfg(path), tok, method="grpo", n=1)
    text = "\n".join(lines)
    assert "<|im_start|>user\nWhat is 2 + 2?<|im_end|>" in text
    assert '=== the model answers; rewards get {"answer": "4"} ===' in text
