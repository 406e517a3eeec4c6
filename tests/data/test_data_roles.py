"""Mapping, not rewriting: roles: maps role values; nova data check guesses the --columns a file needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_nova
from data_fixtures import data_cfg
from nova.config.data_schema import DatasetSpec
from nova.data import check_data
from nova.data.cache import cache_key
from nova.data.formats import guess_columns
from nova.errors import DataError

SHAREGPT = {"conversations": [{"from": "human", "value": "hi"}, {"from": "chatgpt", "value": "hello"}]}
GEMINI = {"messages": [{"role": "user", "content": "hi"}, {"role": "model", "content": "hello"}]}


def _file(tmp: Path, record: dict[str, object]) -> Path:
    path = tmp / "chats.jsonl"
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(("record", "role"), [(SHAREGPT, "chatgpt"), (GEMINI, "model")])
def test_roles_map_a_files_role_values(tmp_path: Path, record: dict[str, object], role: str) -> None:
    path = _file(tmp_path, record)
    with pytest.raises(DataError) as info:
        check_data(data_cfg(path), method="sft")
    first = info.value.lines()[0]
    assert f"unknown role '{role}'" in first and f"roles: {{{role}: assistant}}" in first
    report = check_data(data_cfg(DatasetSpec(path=str(path), roles={role: "assistant"})), method="sft")
    assert report.kept == 1


def test_roles_are_part_of_the_data_fingerprint(tmp_path: Path) -> None:
    path = _file(tmp_path, SHAREGPT)
    keys = {cache_key(data_cfg(DatasetSpec(path=str(path), roles=roles)), method="sft", seed=1, dpo_lengths=(1, 1),
                      tokenizer_id="t") for roles in ({"chatgpt": "assistant"}, {"chatgpt": "user"})}
    assert len(keys) == 2


def test_a_role_can_only_map_to_a_role_nova_knows() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        DatasetSpec(path=".", roles={"chatgpt": "bot"})  # type: ignore[dict-item]


def test_guessed_columns() -> None:
    assert guess_columns(["question", "answer"]) == {"prompt": "question", "completion": "answer"}
    assert guess_columns(["Prompt", "response_j", "response_k"]) == {"chosen": "response_j", "rejected": "response_k"}
    assert guess_columns(["prompt", "completion"]) is None  # already known
    assert guess_columns(["foo", "bar"]) is None


def test_data_check_prints_the_columns_it_would_guess_and_applies_them_only_when_given(tmp_path: Path) -> None:
    path = tmp_path / "qa.csv"
    path.write_text("question,answer\nwhat is 2+2,4\nwho,me\n", encoding="utf-8")
    refused = run_nova("data", "check", str(path))
    assert refused.returncode == 2
    assert "--columns prompt=question,completion=answer" in refused.stderr
    given = run_nova("data", "check", str(path), "--columns", "prompt=question,completion=answer")
    assert given.returncode == 0 and "kept 2" in given.stdout
