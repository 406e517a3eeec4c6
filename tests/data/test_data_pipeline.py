"""Holdout, dedup, leakage, mixing, overlong handling and the tokenization cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import data_fixtures
from data_fixtures import chat, data_cfg, write_jsonl
from nova.config.data_schema import DatasetSpec
from nova.data import check_data, prepare_stage_data

tok = data_fixtures.tok  # the shared tokenizer fixture


def _chats(n: int, tag: str = "q") -> list[dict[str, Any]]:
    return [chat(f"{tag} {i}", f"answer {i}") for i in range(n)]


def _prompts(ds: Any, tokenizer: Any) -> list[str]:
    return [tokenizer.decode(ids) for ids in ds["input_ids"]]


def test_holdout_is_deterministic_and_depends_on_the_seed(tmp_path: Path, tok: Any) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", _chats(50))
    cfg = data_cfg(path, tmp=tmp_path, eval_split=0.2)
    first = prepare_stage_data(cfg, tok, method="sft", seed=1)
    again = prepare_stage_data(cfg.model_copy(update={"cache_dir": str(tmp_path / "c2")}), tok, method="sft", seed=1)
    other = prepare_stage_data(cfg, tok, method="sft", seed=2)
    assert (len(first.train), len(first.eval)) == (40, 10)
    assert _prompts(first.eval, tok) == _prompts(again.eval, tok)
    assert _prompts(first.eval, tok) != _prompts(other.eval, tok)
    assert not set(_prompts(first.eval, tok)) & set(_prompts(first.train, tok))


def test_duplicates_after_whitespace_normalization_are_removed_from_train(tmp_path: Path) -> None:
    rows = [chat("hello  world", "hi"), chat("hello world", "hi "), chat("other", "x")]
    report = check_data(data_cfg(write_jsonl(tmp_path / "d.jsonl", rows)), method="sft")
    assert (report.deduplicated, report.train_records) == (1, 2)
    report = check_data(data_cfg(tmp_path / "d.jsonl", dedup=False), method="sft")
    assert (report.deduplicated, report.train_records) == (0, 3)


def test_eval_records_also_in_train_are_removed_from_eval(tmp_path: Path, tok: Any) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", _chats(5))
    evals = write_jsonl(tmp_path / "eval.jsonl", [*_chats(2), chat("fresh", "new"), chat("fresh", "new")])
    cfg = data_cfg(train, tmp=tmp_path, eval_datasets=[DatasetSpec(path=str(evals))])
    prepared = prepare_stage_data(cfg, tok, method="sft", seed=0)
    assert prepared.report.leakage_removed == 2 and prepared.report.eval_deduplicated == 1
    assert len(prepared.eval) == 1 and "fresh" in _prompts(prepared.eval, tok)[0]


def test_weights_and_caps_mix_sources(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", _chats(10, "a"))
    b = write_jsonl(tmp_path / "b.jsonl", _chats(30, "b"))
    cfg = data_cfg(DatasetSpec(path=str(a), weight=3), DatasetSpec(path=str(b), weight=1))
    report = check_data(cfg, method="sft")
    # 40 records, shares 3:1 -> a: 30 (10 repeated twice more), b: 10 of 30
    assert (report.train_records, report.weight_repeated, report.weight_subsampled) == (40, 20, 20)
    capped = check_data(data_cfg(DatasetSpec(path=str(a), max_samples=4), b, max_samples=20), method="sft")
    assert (capped.over_max_samples, capped.capped, capped.train_records) == (6, 14, 20)


def test_overlong_truncate_or_drop_is_counted(tmp_path: Path, tok: Any) -> None:
    path = write_jsonl(tmp_path / "l.jsonl", [chat("hi", "long " * 200), chat("hi", "short")])
    kept = prepare_stage_data(data_cfg(path, tmp=tmp_path, max_length=40), tok, method="sft", seed=0)
    assert (kept.report.truncated, len(kept.train), max(map(len, kept.train["input_ids"]))) == (1, 2, 40)
    dropped = prepare_stage_data(data_cfg(path, tmp=tmp_path, max_length=40, overlong="drop"), tok,
                                 method="sft", seed=0)
    assert (dropped.report.dropped_too_long, len(dropped.train)) == (1, 1)
    assert dropped.report.tokens is not None and dropped.report.tokens.over_max_length == 1


def test_truncation_that_leaves_no_trained_token_drops_and_counts(tmp_path: Path, tok: Any) -> None:
    short = chat("q", "a")
    path = write_jsonl(tmp_path / "s.jsonl", [chat("question " * 50, "a"), short])
    fits = len(tok.apply_chat_template(short["messages"], tokenize=True, return_dict=False))
    prepared = prepare_stage_data(data_cfg(path, tmp=tmp_path, max_length=fits), tok, method="sft", seed=0)
    assert (prepared.report.dropped_no_trained, len(prepared.train)) == (1, 1)


def test_token_view_counts_trained_and_masked_tokens(tmp_path: Path, tok: Any) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", _chats(3))
    report = check_data(data_cfg(path), method="sft", tokenizer=tok)
    prepared = prepare_stage_data(data_cfg(path, tmp=tmp_path), tok, method="sft", seed=0)
    trained = sum(sum(1 for x in labels if x != -100) for labels in prepared.train["labels"])
    total = sum(map(len, prepared.train["input_ids"]))
    assert report.tokens is not None
    assert (report.tokens.trained_tokens, report.tokens.trained_tokens + report.tokens.masked_tokens) == \
        (trained, total)
    assert report.tokens.min <= report.tokens.median <= report.tokens.p95 <= report.tokens.max
    assert any("trained tokens" in line for line in report.lines())
    assert not (tmp_path / "unused").exists()


def test_cache_hit_on_rerun_and_miss_after_an_edit(tmp_path: Path, tok: Any) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", _chats(20))
    cfg = data_cfg(path, tmp=tmp_path, eval_split=0.1)
    first = prepare_stage_data(cfg, tok, method="sft", seed=0)
    assert first.report.cache is not None and first.report.cache.startswith("saved")
    second = prepare_stage_data(cfg, tok, method="sft", seed=0)
    assert second.report.cache is not None and second.report.cache.startswith("hit")
    assert second.train["input_ids"] == first.train["input_ids"] and len(second.eval) == len(first.eval)
    assert second.report.deduplicated == first.report.deduplicated and second.report.tokens == first.report.tokens
    write_jsonl(path, _chats(21))
    third = prepare_stage_data(cfg, tok, method="sft", seed=0)
    assert third.report.cache is not None and third.report.cache.startswith("saved")
    assert len(third.train) + len(third.eval) == 21
    changed = prepare_stage_data(cfg.model_copy(update={"max_length": 30}), tok, method="sft", seed=0)
    assert changed.report.cache is not None and changed.report.cache.startswith("saved")


def test_report_round_trips_through_json(tmp_path: Path, tok: Any) -> None:
    import json

    from nova.data import DataReport

    path = write_jsonl(tmp_path / "r.jsonl", _chats(4))
    report = check_data(data_cfg(path), method="sft", tokenizer=tok)
    data = json.loads(json.dumps(report.to_dict()))
    assert DataReport.from_dict(data).lines() == report.lines()


@pytest.mark.parametrize("num_proc", [2])
def test_multi_process_tokenization_matches_single(tmp_path: Path, tok: Any, num_proc: int) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", _chats(40))
    one = prepare_stage_data(data_cfg(path, tmp=tmp_path / "1"), tok, method="sft", seed=0)
    many = prepare_stage_data(data_cfg(path, tmp=tmp_path / "2", num_proc=num_proc), tok, method="sft", seed=0)
    assert one.train["labels"] == many.train["labels"] and one.train["input_ids"] == many.train["input_ids"]
