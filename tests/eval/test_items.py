"""Task files any user writes: every bad line reported with file:line, and the rules that judge a reply."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nova.errors import DataError
from nova.eval.items import Item, is_right, last_number, normalise, read_items


def _write(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_three_shapes_are_read(tmp_path: Path) -> None:
    gen = read_items(_write(tmp_path / "g.jsonl", [{"prompt": "2+2?", "answer": 4, "match": "number"}]))
    assert gen[0].kind == "generate" and gen[0].answer == "4"
    mc = read_items(_write(tmp_path / "c.jsonl", [{"prompt": "p", "choices": ["a", "b"], "answer": 1,
                                                     "system": "Be brief."}]))
    assert mc[0].kind == "choice" and mc[0].gold == 1 and mc[0].system == "Be brief."
    pref = read_items(_write(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "good", "rejected": "bad"}]))
    assert pref[0].kind == "preference" and pref[0].chosen == "good"


def test_every_bad_line_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.jsonl", [
        {"prompt": "ok", "answer": "a"},
        "{not json",
        {"prompt": "p", "choices": ["a", "b"], "answer": 2},
        {"prompt": "p", "answer": "(", "match": "regex"},
        {"prompt": "", "answer": "x"},
        {"prompt": "p", "answer": "x", "match": "fuzzy"},
    ])
    with pytest.raises(DataError) as caught:
        read_items(path)
    wheres = [p.where for p in caught.value.problems]
    assert wheres == [f"{path}:{n}" for n in (2, 3, 4, 5, 6)]
    assert "index of the right choice" in caught.value.problems[1].message


def test_one_kind_per_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "mixed.jsonl", [{"prompt": "p", "answer": "a"},
                                             {"prompt": "p", "choices": ["a", "b"], "answer": 0}])
    with pytest.raises(DataError, match="several kinds"):
        read_items(path)


def test_match_rules() -> None:
    assert normalise("  The  Answer: Paris. ") == "the answer: paris"
    assert is_right(Item("q", answer="Paris"), " paris.")
    assert not is_right(Item("q", answer="Paris"), "It is Paris")
    assert is_right(Item("q", answer="Paris", match="contains"), "It is PARIS, of course")
    assert is_right(Item("q", answer=r"\b4[0-9]\b", match="regex"), "about 42 apples")
    assert not is_right(Item("q", answer=r"\b4[0-9]\b", match="regex"), "about 420 apples")
    assert is_right(Item("q", answer="1250", match="number"), "so 2 + 3 = 5 ... The answer is $1,250.00.")
    assert not is_right(Item("q", answer="1250", match="number"), "The answer is 1250, then 3 more")
    assert last_number("no digits") is None and last_number("-3.5 or 7") == "7"
