"""Every supported record shape parses, renders through the chat template, and trains the right tokens."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

import data_fixtures
from conftest import ROOT
from data_fixtures import chat, data_cfg, trained_segments, write_jsonl
from nova.config.data_schema import DatasetSpec
from nova.data import prepare_stage_data
from nova.errors import DataError

EOT = "<|im_end|>"
FIXTURES = ROOT / "tests" / "fixtures"

tok = data_fixtures.tok  # the shared tokenizer fixture


def _sft_rows(cfg: Any, tokenizer: Any) -> list[dict[str, Any]]:
    prepared = prepare_stage_data(cfg, tokenizer, method="sft", seed=0)
    return list(prepared.train)


def test_messages_multi_turn_trains_each_assistant_turn_and_its_end_token(tmp_path: Path, tok: Any) -> None:
    row = {"messages": [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "What is 2 plus 2?"},
                        {"role": "assistant", "content": "<think>add them</think>4"},
                        {"role": "user", "content": "And 3 plus 3?"},
                        {"role": "assistant", "content": "6"}]}
    rows = _sft_rows(data_cfg(write_jsonl(tmp_path / "a.jsonl", [row]), tmp=tmp_path), tok)
    ids, labels = rows[0]["input_ids"], rows[0]["labels"]
    # A template that knows nothing of reasoning gets it as a think block in nova's one layout.
    reply = "<think>\nadd them\n</think>\n\n4"
    assert trained_segments(tok, ids, labels) == [f"{reply}{EOT}", f"6{EOT}"]
    messages = [*row["messages"][:2], {"role": "assistant", "content": reply}, *row["messages"][3:]]
    expected = tok(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)
    assert ids == expected["input_ids"]  # the model sees exactly its own template's rendering
    assert labels[-1] == -100  # the newline after the last <|im_end|> is formatting, not trained


def test_loss_weight_zero_masks_an_assistant_turn_and_text_parts_are_joined(tmp_path: Path, tok: Any) -> None:
    row = {"messages": [
        {"role": "user", "content": [{"type": "text", "value": "hi"}], "loss_weight": 0.0},
        {"role": "assistant", "content": [{"type": "text", "text": "old "}, {"type": "text", "text": "reply"}],
         "loss_weight": 0.0},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "new reply", "loss_weight": 1.0}]}
    rows = _sft_rows(data_cfg(write_jsonl(tmp_path / "w.jsonl", [row]), tmp=tmp_path), tok)
    assert trained_segments(tok, rows[0]["input_ids"], rows[0]["labels"]) == [f"new reply{EOT}"]
    assert "old reply" in tok.decode(rows[0]["input_ids"])


def test_loss_on_all_trains_every_token(tmp_path: Path, tok: Any) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [chat("hi", "hello")])
    row = _sft_rows(data_cfg(path, tmp=tmp_path, loss_on="all"), tok)[0]
    assert row["labels"] == row["input_ids"]


@pytest.mark.parametrize(("record", "answer", "masked"), [
    ({"prompt": "Capital of France?", "completion": "Paris."}, "Paris.", "Capital of France?"),
    ({"prompt": [{"role": "user", "content": "Capital of France?"}],
      "completion": [{"role": "assistant", "content": "Paris."}]}, "Paris.", "Capital of France?"),
    ({"instruction": "Translate", "input": "da", "output": "yes", "system": "You translate."}, "yes", "da"),
    ({"conversations": [{"from": "system", "value": "sys"}, {"from": "human", "value": "hey"},
                        {"from": "gpt", "value": "hello there"}]}, "hello there", "hey"),
])
def test_each_sft_format_trains_only_the_answer(tmp_path: Path, tok: Any, record: dict[str, Any], answer: str,
                                                masked: str) -> None:
    rows = _sft_rows(data_cfg(write_jsonl(tmp_path / "f.jsonl", [record]), tmp=tmp_path), tok)
    segments = trained_segments(tok, rows[0]["input_ids"], rows[0]["labels"])
    assert segments == [f"{answer}{EOT}"]
    assert masked in tok.decode(rows[0]["input_ids"])


def test_alpaca_history_becomes_turns(tmp_path: Path, tok: Any) -> None:
    record = {"instruction": "and now?", "input": "", "output": "second", "history": [["first q", "first"]]}
    rows = _sft_rows(data_cfg(write_jsonl(tmp_path / "h.jsonl", [record]), tmp=tmp_path), tok)
    assert trained_segments(tok, rows[0]["input_ids"], rows[0]["labels"]) == [f"first{EOT}", f"second{EOT}"]


def test_raw_text_is_fully_trained_and_ends_with_eos(tmp_path: Path, tok: Any) -> None:
    row = _sft_rows(data_cfg(write_jsonl(tmp_path / "t.jsonl", [{"text": "Bucuresti este capitala."}]),
                             tmp=tmp_path), tok)[0]
    assert row["labels"] == row["input_ids"]
    assert row["input_ids"][-1] == tok.eos_token_id
    assert "Bucuresti este capitala." in tok.decode(row["input_ids"])


def test_preference_prompt_chosen_rejected(tmp_path: Path, tok: Any) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Say yes", "chosen": "yes", "rejected": "no"}])
    prepared = prepare_stage_data(data_cfg(path, tmp=tmp_path), tok, method="dpo", seed=0)
    row = prepared.train[0]
    assert tok.decode(row["prompt_ids"]).endswith("<|im_start|>user\nSay yes<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode(row["chosen_ids"]) == f"yes{EOT}"
    assert tok.decode(row["rejected_ids"]) == f"no{EOT}"
    assert row["chosen_ids"][-1] == tok.eos_token_id


def test_preference_sharegpt_form_and_column_mapping(tmp_path: Path, tok: Any) -> None:
    sharegpt = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"},
                                  {"from": "human", "value": "pick one"}],
                "chosen": {"from": "gpt", "value": "good"}, "rejected": {"from": "gpt", "value": "bad"}}
    renamed = {"question": "pick one", "response_j": "good", "response_k": "bad"}
    a = write_jsonl(tmp_path / "a.jsonl", [sharegpt])
    b = write_jsonl(tmp_path / "b.jsonl", [renamed])
    spec_b = DatasetSpec(path=str(b), columns={"prompt": "question", "chosen": "response_j",
                                               "rejected": "response_k"})
    prepared = prepare_stage_data(data_cfg(a, spec_b, tmp=tmp_path), tok, method="dpo", seed=0)
    rows = list(prepared.train)
    assert [tok.decode(r["chosen_ids"]) for r in rows] == [f"good{EOT}", f"good{EOT}"]
    assert "hello" in tok.decode(rows[0]["prompt_ids"])


def test_dpo_truncation_keeps_prompt_end_and_completion_start(tmp_path: Path, tok: Any) -> None:
    from nova.methods.dpo import DPOConfig

    long_prompt = "one two three four five six seven eight nine ten " * 5
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": long_prompt + "END", "chosen": "yes " * 40,
                                               "rejected": "no"}])
    prepared = prepare_stage_data(data_cfg(path, tmp=tmp_path), tok, method="dpo", seed=0,
                                  dpo=DPOConfig(max_prompt_length=12, max_completion_length=5))
    row = prepared.train[0]
    assert len(row["prompt_ids"]) == 12 and tok.decode(row["prompt_ids"]).endswith("<|im_start|>assistant\n")
    assert len(row["chosen_ids"]) == 5 and tok.decode(row["chosen_ids"]).startswith("yes")
    assert prepared.report.prompt_truncated == 1 and prepared.report.completion_truncated == 1


def test_json_array_csv_parquet_and_directory(tmp_path: Path, tok: Any) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.json").write_text(json.dumps([chat("q1", "a1")]), encoding="utf-8")
    with (tmp_path / "d" / "b.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["instruction", "input", "output"])
        writer.writerow(["q2", "", "a2"])
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["q3"], "completion": ["a3"]}), tmp_path / "d" / "c.parquet")
    prepared = prepare_stage_data(data_cfg(tmp_path / "d", tmp=tmp_path), tok, method="sft", seed=0)
    answers = [trained_segments(tok, r["input_ids"], r["labels"]) for r in prepared.train]
    assert answers == [[f"a1{EOT}"], [f"a2{EOT}"], [f"a3{EOT}"]]
    assert prepared.report.sources[0].files == 3


def test_json_object_of_records_names_keys(tmp_path: Path) -> None:
    from nova.data import check_data

    path = tmp_path / "o.json"
    path.write_text(json.dumps({"r1": chat("q", "a"), "r2": {"messages": []}}), encoding="utf-8")
    report = check_data(data_cfg(path, on_error="skip"), method="sft")
    assert report.kept == 1 and report.problems[0].where == f"{path}['r2']"


def test_tool_turns_pass_through_and_only_assistant_turns_train(tmp_path: Path, tok: Any) -> None:
    row = {"messages": [
        {"role": "user", "content": "Weather in Cluj?"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
            "name": "weather", "arguments": {"city": "Cluj"}}}]},
        {"role": "tool", "content": "12 C, rain"},
        {"role": "assistant", "content": "It is 12 C and raining."}]}
    path = write_jsonl(tmp_path / "tools.jsonl", [row])
    # The tiny ChatML template writes only content: the call would be trained as an empty reply.
    with pytest.raises(DataError) as info:
        _sft_rows(data_cfg(path, tmp=tmp_path), tok)
    assert info.value.problems[0].render().startswith(f"{path}:1: the chat template of ")
    assert "writes nothing of the tool call 'weather'" in info.value.problems[0].message
    import copy

    qwen = copy.deepcopy(tok)
    qwen.chat_template = (FIXTURES / "chat-templates" / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text()
    rows = _sft_rows(data_cfg(path, tmp=tmp_path), qwen)
    segments = trained_segments(qwen, rows[0]["input_ids"], rows[0]["labels"])
    call = '<tool_call>\n{"name": "weather", "arguments": {"city": "Cluj"}}\n</tool_call>'
    assert segments == [f"{call}{EOT}", f"It is 12 C and raining.{EOT}"]  # the call, then the answer
    assert "12 C, rain" in qwen.decode(rows[0]["input_ids"])




@pytest.mark.parametrize(("name", "method", "fmt"), [
    ("sora_en.jsonl", "sft", "messages"), ("doica_ro.jsonl", "sft", "messages"),
    ("sora_dpo.jsonl", "dpo", "preference"), ("rrt_ro_text.jsonl", "sft", "text"),
])
def test_shipped_data_files_are_valid(name: str, method: str, fmt: str) -> None:
    from nova.data import check_data

    report = check_data(data_cfg(ROOT / "data" / name), method=method)  # type: ignore[arg-type]
    assert report.kept == report.read > 0 and list(report.sources[0].formats) == [fmt]


def test_prompt_completion_trains_only_the_completion_even_with_assistant_turns_in_the_prompt() -> None:
    from nova.data.records import normalize

    record = {"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                         {"role": "user", "content": "c"}],
              "completion": [{"role": "assistant", "content": "d"}]}
    example = normalize(record, "prompt_completion")
    assert [m["content"] for m in example["messages"]] == ["a", "b", "c", "d"]
    assert example["train"] == [False, False, False, True]
