"""Unpaired feedback (KTO) records: the three shapes read the same, bad ones name file:line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import data_fixtures
from conftest import ROOT
from data_fixtures import data_cfg, write_jsonl
from nova.data import check_data, prepare_stage_data
from nova.errors import DataError

tok = data_fixtures.tok  # the shared tokenizer fixture


def verdict(user: str, answer: str, label: Any, key: str = "label") -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}], key: label}


def _problems(path: Path, method: str = "kto") -> list[str]:
    with pytest.raises(DataError) as info:
        check_data(data_cfg(path), method=method)  # type: ignore[arg-type]
    return [p.render() for p in info.value.problems]


def test_the_three_shapes_give_the_same_example(tmp_path: Path, tok: Any) -> None:
    rows = [
        {"prompt": [{"role": "user", "content": "2 + 2?"}], "completion": [{"role": "assistant", "content": "4"}],
         "label": True},
        verdict("2 + 3?", "6", False),
        {"conversations": [{"from": "human", "value": "2 + 5?"}, {"from": "gpt", "value": "7"}], "kto_tag": True},
    ]
    path = write_jsonl(tmp_path / "fb.jsonl", [rows[0]])
    other = write_jsonl(tmp_path / "fb2.jsonl", rows[1:])
    data = prepare_stage_data(data_cfg(path, other, tmp=tmp_path), tok, method="kto", seed=0)
    assert data.report.desirable == 2 and data.report.undesirable == 1
    assert data.train["label"] == [True, False, True]
    for row in data.train:
        prompt, completion = tok.decode(row["prompt_ids"]), tok.decode(row["completion_ids"])
        assert prompt.endswith("<|im_start|>assistant\n") and "<|im_start|>user\n2 + " in prompt
        assert completion.endswith("<|im_end|>") and completion[0] in "467"


def test_bad_feedback_records_name_file_line_and_reason(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "fb.jsonl", [
        verdict("a", "b", True),
        verdict("c", "d", "yes"),
        {"messages": [{"role": "user", "content": "e"}, {"role": "assistant", "content": "f"}]},
        {"messages": [{"role": "assistant", "content": "g"}, {"role": "user", "content": "h"}], "label": False},
        {"prompt": "i", "completion": "", "label": True},
    ])
    problems = _problems(path)
    assert problems[0] == f"{path}:2: 'label' is 'yes', expected true or false (label each reply true " \
        "(desirable) or false (undesirable))"
    assert problems[1].startswith(f"{path}:3: missing field 'label'")
    assert problems[2].startswith(f"{path}:4: the record ends with a 'user' turn")
    assert problems[3].startswith(f"{path}:5: 'completion' is empty")
    assert len(problems) == 4


def test_feedback_data_is_refused_by_other_methods_and_pairs_by_kto(tmp_path: Path) -> None:
    fb = write_jsonl(tmp_path / "fb.jsonl", [verdict("a", "b", True)])
    [problem] = _problems(fb, method="sft")
    assert "'unpaired' records cannot train a sft stage" in problem and "method: kto" in problem
    pairs = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}])
    [problem] = _problems(pairs, method="kto")
    assert "'preference' records cannot train a kto stage" in problem


def test_the_shipped_feedback_set_is_valid(tmp_path: Path) -> None:
    report = check_data(data_cfg(ROOT / "data" / "kto_en.jsonl"), method="kto")
    assert report.read == 300 and report.kept == 300
    assert report.desirable == 150 and report.undesirable == 150


def test_preference_methods_read_the_dpo_formats(tmp_path: Path, tok: Any) -> None:
    rows = [{"prompt": "q", "chosen": "good answer", "rejected": "bad answer"}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    for method in ("orpo", "simpo"):
        data = prepare_stage_data(data_cfg(path, tmp=tmp_path), tok, method=method, seed=0)
        assert tok.decode(data.train[0]["chosen_ids"]).startswith("good answer")
    assert json.loads(json.dumps(data.report.to_dict()))["method"] == "simpo"


def test_a_csv_of_feedback_reads_its_labels(tmp_path: Path, tok: Any) -> None:
    path = tmp_path / "fb.csv"
    path.write_text("prompt,completion,label\nhi,hello,true\nyo,go away,FALSE\nhey,sure,1\n", encoding="utf-8")
    data = prepare_stage_data(data_cfg(path, tmp=tmp_path), tok, method="kto", seed=0)
    assert data.train["label"] == [True, False, True]
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,completion,label\nhi,hello,maybe\n", encoding="utf-8")
    assert _problems(bad)[0].startswith(f"{bad}:2: 'label' is 'maybe', expected true or false")
