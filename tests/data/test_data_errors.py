"""Bad data fails before any model loads, naming file:line and the reason, or is skipped and counted."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

import data_fixtures
from data_fixtures import chat, data_cfg, write_jsonl
from nova.config.data_schema import DatasetSpec
from nova.data import check_data, prepare_stage_data
from nova.errors import DataError

GOOD = json.dumps(chat("hi", "hello"))

tok = data_fixtures.tok  # the shared tokenizer fixture


def _fail(path: Path, method: str = "sft", **kwargs: Any) -> DataError:
    with pytest.raises(DataError) as info:
        check_data(data_cfg(path, **kwargs), method=method)  # type: ignore[arg-type]
    return info.value


def _one(err: DataError) -> str:
    assert len(err.problems) == 1, err.lines()
    return err.problems[0].render()


def test_truncated_last_line_is_reported_with_its_line_number(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(f"{GOOD}\n{GOOD}\n{GOOD[:20]}", encoding="utf-8")
    assert _one(_fail(path)).startswith(f"{path}:3: the last line is cut off")


def test_invalid_json_in_the_middle_is_not_called_truncated(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(f"{GOOD}\n{{oops\n{GOOD}\n", encoding="utf-8")
    assert _one(_fail(path)).startswith(f"{path}:2: invalid JSON")


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + f"{GOOD}\n".encode())
    assert check_data(data_cfg(path), method="sft").kept == 1


def test_invalid_bytes_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(f"{GOOD}\n".encode() + b'{"text": "caf\xe9"}\n')
    assert _one(_fail(path)).startswith(f"{path}:2: not UTF-8: byte 0xe9")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    assert _one(_fail(path)) == f"{path}: the file is empty"


def test_zero_valid_records_fails_even_when_skipping(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "z.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}] * 3)
    err = _fail(path, on_error="skip")
    assert "no usable training records" in err.title and "read 3" in err.title
    assert err.problems[0].where == f"{path}:1"


def test_ten_megabyte_record_is_read_and_truncated_not_fatal(tmp_path: Path, tok: Any) -> None:
    big = chat("summarize", "word " * 2_000_000)  # 10 MB of text in one line
    path = write_jsonl(tmp_path / "big.jsonl", [chat("hi", "hello"), big])
    assert path.stat().st_size > 10_000_000
    prepared = prepare_stage_data(data_cfg(path, tmp=tmp_path, max_length=64), tok, method="sft", seed=0)
    assert prepared.report.truncated == 1 and len(prepared.train) == 2
    assert max(len(r) for r in prepared.train["input_ids"]) == 64


def test_two_formats_in_one_file(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "mixed.jsonl", [chat("a", "b"), {"instruction": "x", "output": "y"}])
    message = _one(_fail(path))
    assert message.startswith(f"{path}:2: this record is 'alpaca' but the file's first record is 'messages'")


def test_preference_without_rejected(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pref.jsonl", [{"prompt": "p", "chosen": "c"}])
    assert _one(_fail(path, method="dpo")) .startswith(f"{path}:1: missing field 'rejected'")


def test_preference_file_in_an_sft_stage_is_one_problem_for_the_file(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pref.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}] * 4)
    err = _fail(path)
    assert "'preference' records cannot train a sft stage" in _one(err)


def test_csv_with_a_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("prompt,chosen\nhello,hi\n", encoding="utf-8")
    assert _one(_fail(path, method="dpo")).startswith(f"{path}:1: the preference format needs a column 'rejected'")


def test_csv_mapped_column_that_does_not_exist(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_text("question,answer\nhello,hi\n", encoding="utf-8")
    spec = DatasetSpec(path=str(path), columns={"prompt": "question", "completion": "response"})
    assert "no column 'response' (mapped to 'completion' by columns)" in _one(_fail(spec))  # type: ignore[arg-type]


@pytest.mark.parametrize(("record", "reason", "fragment"), [
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}, "empty_field",
     "'messages[1].content' is empty"),
    ({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}, "non_string_content",
     "'messages[0].content' is int, expected a string"),
    ({"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}, "unknown_role",
     "messages[0] has unknown role 'robot'"),
    ({"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "hi"}]},
     "roles_out_of_order", "message 0 is 'assistant' as the first message"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                   {"role": "assistant", "content": "c"}]}, "roles_out_of_order", "message 1 is 'user' after 'user'"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "loss_weight": 0}]},
     "no_assistant_turn", "every assistant message has loss_weight 0"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "roles_out_of_order", "the chat ends with a 'user' turn"),
    ({"prompt": "p", "chosen": "same  answer", "rejected": "same answer"}, "chosen_equals_rejected",
     "chosen and rejected are identical"),
    ({"foo": 1}, "unknown_format", "no known fields (found: foo)"),
    ([1, 2], "not_an_object", "the record is a list"),
])
def test_record_level_reasons(tmp_path: Path, record: Any, reason: str, fragment: str) -> None:
    method = "dpo" if isinstance(record, dict) and "chosen" in record else "sft"
    good = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) if method == "dpo" else GOOD
    path = tmp_path / "r.jsonl"
    path.write_text(f"{json.dumps(record)}\n{good}\n", encoding="utf-8")
    report = check_data(data_cfg(path, on_error="skip"), method=method)  # type: ignore[arg-type]
    assert dict(report.skipped) == {reason: 1} and report.kept == 1
    message = _one(_fail(path, method=method))
    assert message.startswith(f"{path}:1: {fragment}"), message


def test_skip_mode_counts_each_reason_and_keeps_the_good(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text(f"{GOOD}\nnot json\n" + json.dumps({"messages": [{"role": "user", "content": "x"}]})
                    + f"\n{json.dumps(chat('other', 'reply'))}\n", encoding="utf-8")
    report = check_data(data_cfg(path, on_error="skip"), method="sft")
    assert (report.read, report.kept, dict(report.skipped)) == (4, 2, {"invalid_json": 1,
                                                                       "roles_out_of_order": 1})
    assert [p.where for p in report.problems] == [f"{path}:2", f"{path}:3"]


def test_directory_with_an_undecodable_file_names_that_file(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    write_jsonl(tmp_path / "d" / "good.jsonl", [chat("a", "b")])
    (tmp_path / "d" / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    err = _fail(tmp_path / "d")
    assert _one(err).startswith(f"{tmp_path / 'd' / 'broken.parquet'}: not a readable Parquet file")
    report = check_data(data_cfg(tmp_path / "d", on_error="skip"), method="sft")
    assert report.kept == 1 and dict(report.skipped_files) == {"unreadable": 1}


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root reads chmod 000 files, Windows ignores the mode; covered by the undecodable-file test")
def test_directory_with_an_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    write_jsonl(tmp_path / "d" / "good.jsonl", [chat("a", "b")])
    locked = write_jsonl(tmp_path / "d" / "locked.jsonl", [chat("c", "d")])
    locked.chmod(0)
    try:
        assert "cannot read" in _one(_fail(tmp_path / "d"))
    finally:
        locked.chmod(0o644)


def test_hub_id_offline_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = _fail(DatasetSpec(path="someone/some-dataset"))  # type: ignore[arg-type]
    assert "hub dataset ids cannot be read offline" in _one(err)


def test_template_that_rewrites_history_trains_each_turn_and_an_unlocatable_one_names_the_model(
        tmp_path: Path, tok: Any) -> None:
    import copy

    from data_fixtures import trained_segments

    odd = copy.deepcopy(tok)
    # Renders a different header when a later turn follows: not one sequence, but each reply as
    # the final turn of its own prefix still continues the generation prompt.
    odd.chat_template = ("{% for m in messages %}{% if not loop.last %}{{ m['role'] | upper }}{% else %}"
                         "{{ m['role'] }}{% endif %}:\n{{ m['content'] }}<|im_end|>{% endfor %}"
                         "{% if add_generation_prompt %}assistant:\n{% endif %}")
    odd.name_or_path = "odd-model"
    path = write_jsonl(tmp_path / "c.jsonl", [chat("hi", "hello")])
    prepared = prepare_stage_data(data_cfg(path, tmp=tmp_path), odd, method="sft", seed=0)
    row = prepared.train[0]
    assert odd.decode(row["input_ids"]) == "user:\nhi<|im_end|>assistant:\nhello<|im_end|>"
    assert trained_segments(odd, row["input_ids"], row["labels"]) == ["hello<|im_end|>"]
    # A final turn that does not continue the generation prompt at all: nothing to line up.
    odd.chat_template = ("{% for m in messages %}{{ m['role'] | upper }}> {{ m['content'] }}<|im_end|>{% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")
    with pytest.raises(DataError) as info:
        prepare_stage_data(data_cfg(path, tmp=tmp_path), odd, method="sft", seed=0)
    problem = info.value.problems[0].render()
    assert problem.startswith(f"{path}:1: the chat template of odd-model writes assistant turn 1 in a way that "
                              "does not continue its own generation prompt")


def test_fractional_loss_weight_is_rejected(tmp_path: Path) -> None:
    row = {"messages": [{"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "x", "loss_weight": 0.5}]}
    message = _one(_fail(write_jsonl(tmp_path / "w.jsonl", [row])))
    assert message.startswith(f"{tmp_path / 'w.jsonl'}:1: messages[1].loss_weight is 0.5, expected 0 or 1")


def test_a_lone_surrogate_is_a_record_problem_not_an_internal_error(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    bad = GOOD.replace('"hello"', '"half \\ud800 a pair"')
    path.write_text(f"{GOOD}\n{bad}\n", encoding="utf-8")
    assert _one(_fail(path)).startswith(f"{path}:2: the text holds a lone surrogate (\\ud800)")


def test_a_chat_of_more_messages_than_the_bound_is_refused_at_once(tmp_path: Path) -> None:
    import time

    from nova.data.records import MAX_MESSAGES

    turns = [{"role": r, "content": "x"} for _ in range(10_000) for r in ("user", "assistant")]
    path = write_jsonl(tmp_path / "long.jsonl", [{"messages": turns}])
    start = time.monotonic()
    text = _one(_fail(path))
    assert time.monotonic() - start < 5
    assert f"'messages' has 20000 messages, more than {MAX_MESSAGES} in one chat" in text


def test_turns_past_the_truncation_point_are_not_located(tmp_path: Path, tok: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Spans are located turn by turn (a render per prefix); turns truncation cuts are skipped: the renders of a
    long chat stay near those of its first max_length tokens."""
    from nova.data.template import ChatTemplate

    calls = []
    render = ChatTemplate.render
    monkeypatch.setattr(ChatTemplate, "render", lambda self, *a, **k: calls.append(1) or render(self, *a, **k))
    turns = [{"role": r, "content": "word " * 5} for _ in range(400) for r in ("user", "assistant")]
    path = write_jsonl(tmp_path / "long.jsonl", [{"messages": turns}])
    report = check_data(data_cfg(path, max_length=256), method="sft", tokenizer=tok)
    assert report.truncated == 1 and len(calls) < 200  # 800 messages: 400 trained turns, 2 renders each uncut
