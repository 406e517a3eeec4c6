"""Reasoning data: think tags and reasoning fields, enable_thinking, empty think blocks, the
thinking/plain mix, per-turn sequences and the holdout, templates that read `thinking`, and
{% generation %} marks."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

import data_fixtures
from conftest import ROOT
from data_fixtures import chat, data_cfg, trained_segments, write_jsonl
from nova.config.data_schema import DatasetSpec
from nova.data import check_data, prepare_stage_data
from nova.errors import DataError

tok = data_fixtures.tok  # the shared tokenizer fixture
EOT = "<|im_end|>"
QWEN3 = ROOT / "tests" / "fixtures" / "chat-templates" / "Qwen-Qwen3-0.6B.jinja"


def _swap(tokenizer: Any, template: str, name: str = "swapped") -> Any:
    out = copy.deepcopy(tokenizer)
    out.chat_template = template
    out.name_or_path = name
    return out


def _think_chat(question: str, reasoning: str, answer: str, **extra: Any) -> dict[str, Any]:
    return {**extra, "messages": [{"role": "user", "content": question},
                                  {"role": "assistant", "content": f"<think>{reasoning}</think>{answer}"}]}


def _rows(path: Path, tokenizer: Any, tmp: Path, **cfg: Any) -> tuple[list[dict[str, Any]], Any]:
    prepared = prepare_stage_data(data_cfg(path, tmp=tmp, **cfg), tokenizer, method="sft", seed=0)
    return list(prepared.train), prepared


@pytest.mark.parametrize(("content", "extra", "fragment"), [
    ("<think>never closed", {}, "message 1: <think> is never closed (no </think>)"),
    ("<think>a<think>b</think></think>x", {}, "message 1: nested <think> tags"),
    ("reasoning</think>answer", {}, "message 1 has </think> without an opening <think> at the start"),
    ("Sure. <think>late</think> x", {}, "message 1 has <think> after the start of the reply"),
    ("<think>a</think>x<think>b</think>y", {}, "message 1 has a second think tag after </think>"),
    ("<think>a</think>   ", {}, "message 1 has reasoning but no reply after it"),
    ("<think>a</think>x", {"reasoning_content": "b"}, "message 1 gives its reasoning twice"),
    ("x", {"reasoning_content": "a", "thinking": "b"}, "message 1 has different reasonings in reasoning_content"),
    ("x", {"thinking": "a <think> b"}, "message 1: the reasoning holds another <think> or </think> tag"),
])
def test_bad_think_tags_are_record_errors_with_file_and_line(tmp_path: Path, content: str, extra: dict[str, Any],
                                                            fragment: str) -> None:
    bad = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": content, **extra}]}
    path = write_jsonl(tmp_path / "r.jsonl", [chat("fine", "ok"), bad])
    with pytest.raises(DataError) as info:
        check_data(data_cfg(path), method="sft")
    assert info.value.problems[0].render().startswith(f"{path}:2: {fragment}")
    report = check_data(data_cfg(path, on_error="skip"), method="sft")  # skip mode counts and keeps the good one
    assert report.kept == 1 and sum(report.skipped.values()) == 1


def test_enable_thinking_false_with_reasoning_and_a_non_bool_are_record_errors(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "e.jsonl", [_think_chat("q", "r", "a", enable_thinking=False),
                                              {**chat("q", "a"), "enable_thinking": "no"}, chat("fine", "ok")])
    report = check_data(data_cfg(path, on_error="skip", skip_fail_share=1), method="sft")  # 2 of 3 skipped
    assert [p.render() for p in report.problems] == [
        f"{path}:1: enable_thinking is false but a reply has reasoning (drop the reasoning or set "
        "enable_thinking: true)", f"{path}:2: 'enable_thinking' is str, expected true or false (write it as JSON "
        "true or false, without quotes)"]


def test_reasoning_field_names_and_inline_tags_are_one_reasoning(tmp_path: Path, tok: Any) -> None:
    qwen3 = _swap(tok, QWEN3.read_text(), "qwen3")
    rows = [_think_chat("q1", "\nfirst\n", "a1")]
    for k, name in enumerate(("reasoning_content", "reasoning", "thinking"), start=2):
        rows.append({"messages": [{"role": "user", "content": f"q{k}"},
                                  {"role": "assistant", "content": f"a{k}", name: f"r{k}"}]})
    rows.append(_think_chat("q5", "\n\n", "a5"))  # an empty think block: a plain reply
    got, prepared = _rows(write_jsonl(tmp_path / "f.jsonl", rows), qwen3, tmp_path)
    segments = [trained_segments(qwen3, r["input_ids"], r["labels"]) for r in got]
    assert segments[:4] == [[f"<think>\n{r}\n</think>\n\n{a}{EOT}"] for r, a in
                            (("first", "a1"), ("r2", "a2"), ("r3", "a3"), ("r4", "a4"))]
    assert segments[4] == [f"a5{EOT}"]  # the template's empty think block is in the text, not trained
    assert "<think>\n\n</think>\n\na5" in qwen3.decode(got[4]["input_ids"])
    report = prepared.report
    assert (report.reasoning_examples, report.plain_examples, report.empty_think_masked) == (4, 1, 1)


def test_enable_thinking_per_record_and_per_source_reaches_the_template(tmp_path: Path, tok: Any) -> None:
    qwen3 = _swap(tok, QWEN3.read_text(), "qwen3")
    plain = write_jsonl(tmp_path / "plain.jsonl", [chat("q1", "a1"), {**chat("q2", "a2"), "enable_thinking": True}])
    own = write_jsonl(tmp_path / "own.jsonl", [{**chat("q3", "a3"), "enable_thinking": False}])
    cfg = data_cfg(DatasetSpec(path=str(plain), enable_thinking=False), own, tmp=tmp_path)
    prepared = prepare_stage_data(cfg, qwen3, method="sft", seed=0)
    texts = [qwen3.decode(ids).rstrip() for ids in prepared.train["input_ids"]]
    # false: the empty block is part of the prompt (as Qwen3 answers without thinking), not of the reply
    assert texts[0].endswith(f"<|im_start|>assistant\n<think>\n\n</think>\n\na1{EOT}")
    assert texts[2].endswith(f"<|im_start|>assistant\n<think>\n\n</think>\n\na3{EOT}")
    segments = [trained_segments(qwen3, r["input_ids"], r["labels"]) for r in prepared.train]
    assert segments == [[f"a1{EOT}"], [f"a2{EOT}"], [f"a3{EOT}"]]
    assert prepared.report.empty_think_masked == 1  # only the record that said true


def test_train_empty_think_true_trains_the_block(tmp_path: Path, tok: Any) -> None:
    qwen3 = _swap(tok, QWEN3.read_text(), "qwen3")
    got, prepared = _rows(write_jsonl(tmp_path / "p.jsonl", [chat("q", "a")]), qwen3, tmp_path,
                          train_empty_think=True)
    assert trained_segments(qwen3, got[0]["input_ids"], got[0]["labels"]) == [f"<think>\n\n</think>\n\na{EOT}"]
    assert prepared.report.empty_think_masked == 0


def test_a_template_that_reads_thinking_and_ends_the_final_turn_differently(tmp_path: Path, tok: Any) -> None:
    # gpt-oss-like: reasoning in `thinking`, shown only on the final turn, which ends with another token.
    template = ("{% for m in messages %}{% if m.role == 'user' %}<|im_start|>user\n{{ m.content }}{{ eos_token }}"
                "{% elif loop.last and not add_generation_prompt %}<|im_start|>assistant"
                "{% if m.thinking %}[analysis]{{ m.thinking }}[/analysis]{% endif %}[final]{{ m.content }}"
                "<|endoftext|>{% else %}<|im_start|>assistant[final]{{ m.content }}{{ eos_token }}{% endif %}"
                "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant{% endif %}")
    oss = _swap(tok, template, "oss-like")
    row = {"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1", "thinking": "r1"},
                        {"role": "user", "content": "q2"}, {"role": "assistant", "content": "<think>r2</think>a2"}]}
    got, prepared = _rows(write_jsonl(tmp_path / "o.jsonl", [row]), oss, tmp_path)
    assert [trained_segments(oss, r["input_ids"], r["labels"]) for r in got] == [
        ["[analysis]r1[/analysis][final]a1<|endoftext|>"], ["[analysis]r2[/analysis][final]a2<|endoftext|>"]]
    assert oss.decode(got[1]["input_ids"]).startswith(f"<|im_start|>user\nq1{EOT}<|im_start|>assistant[final]a1{EOT}")
    assert (prepared.report.per_turn_chats, prepared.report.per_turn_sequences) == (1, 2)


def test_generation_marks_are_used(tmp_path: Path, tok: Any) -> None:
    # Between the header and the reply the template writes a tag outside its {% generation %} block:
    # comparing renders would train it, the marks say it is not the model's text.
    template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}[meta]"
                "{% generation %}{{ m.content }}<|im_end|>{% endgeneration %}{% else %}{{ m.content }}<|im_end|>"
                "{% endif %}\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    marked = _swap(tok, template, "marked")
    got, _ = _rows(write_jsonl(tmp_path / "m.jsonl", [chat("q", "answer")]), marked, tmp_path)
    assert trained_segments(marked, got[0]["input_ids"], got[0]["labels"]) == [f"answer{EOT}"]


def test_reasoning_ratio_holds_the_mix_and_the_report_shows_it(tmp_path: Path, tok: Any) -> None:
    thinking = write_jsonl(tmp_path / "t.jsonl", [_think_chat(f"tq{i}", f"step {i}", f"ta{i}") for i in range(10)])
    plain = write_jsonl(tmp_path / "p.jsonl", [chat(f"pq{i}", f"pa{i}") for i in range(30)])
    free = check_data(data_cfg(thinking, plain), method="sft", tokenizer=tok)
    assert (free.reasoning_examples, free.plain_examples) == (10, 30)
    held = check_data(data_cfg(thinking, plain, reasoning_ratio=0.5), method="sft", tokenizer=tok)
    counts = (held.reasoning_examples, held.plain_examples, held.ratio_repeated, held.ratio_subsampled)
    assert counts == (20, 20, 10, 10)
    lines = "\n".join(held.lines())
    assert "reasoning: 20 of 40 training chats (50.0%), plain 20 [data.reasoning_ratio 0.5: 10 repeated, " \
           "10 left out]" in lines
    assert "trained tokens by reply: reasoning " in lines
    from nova.data import DataReport

    assert DataReport.from_dict(json.loads(json.dumps(held.to_dict()))).lines() == held.lines()
    with pytest.raises(DataError) as info:
        check_data(data_cfg(plain, reasoning_ratio=0.5), method="sft")
    assert "needs both kinds of chats, but there are none with reasoning" in info.value.title


def _two_turn(i: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"first question {i}"},
                         {"role": "assistant", "content": f"<think>think {i}</think>first answer {i}"},
                         {"role": "user", "content": f"second question {i}"},
                         {"role": "assistant", "content": f"second answer {i}"}]}


def test_a_chat_split_into_turns_stays_on_one_side_of_the_holdout(tmp_path: Path, tok: Any) -> None:
    qwen3 = _swap(tok, QWEN3.read_text(), "qwen3")
    path = write_jsonl(tmp_path / "s.jsonl", [_two_turn(i) for i in range(20)])
    prepared = prepare_stage_data(data_cfg(path, tmp=tmp_path, eval_split=0.25), qwen3, method="sft", seed=3)
    assert (len(prepared.train), len(prepared.eval)) == (30, 10)  # 15 and 5 chats, two sequences each

    def chats(ds: Any) -> set[str]:
        return {qwen3.decode(ids).split("first question ")[1].split(EOT)[0] for ids in ds["input_ids"]}

    assert len(chats(prepared.train)) == 15 and len(chats(prepared.eval)) == 5
    assert not chats(prepared.train) & chats(prepared.eval)
    assert (prepared.report.per_turn_chats, prepared.report.per_turn_sequences) == (20, 40)
    assert any("per turn: 20 chats became 40 sequences" in line for line in prepared.report.lines())


def test_multi_process_per_turn_rows_match_single(tmp_path: Path, tok: Any) -> None:
    qwen3 = _swap(tok, QWEN3.read_text(), "qwen3")
    path = write_jsonl(tmp_path / "m.jsonl", [_two_turn(i) for i in range(30)] + [{"messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>open"}]}])
    one = prepare_stage_data(data_cfg(path, tmp=tmp_path / "1", on_error="skip"), qwen3, method="sft", seed=0)
    many = prepare_stage_data(data_cfg(path, tmp=tmp_path / "2", on_error="skip", num_proc=2), qwen3,
                              method="sft", seed=0)
    assert one.train["labels"] == many.train["labels"] and one.train["input_ids"] == many.train["input_ids"]
    assert [p.render() for p in one.report.problems] == [p.render() for p in many.report.problems]
    assert one.report.problems[0].where == f"{path}:31"


def test_dpo_replies_with_reasoning_keep_their_think_block(tmp_path: Path, tok: Any) -> None:
    qwen3 = _swap(tok, QWEN3.read_text(), "qwen3")
    row = {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant",
           "content": "<think>check</think>right"}], "rejected": [{"role": "assistant", "content": "wrong"}]}
    prepared = prepare_stage_data(data_cfg(write_jsonl(tmp_path / "d.jsonl", [row]), tmp=tmp_path), qwen3,
                                  method="dpo", seed=0)
    assert qwen3.decode(prepared.train[0]["prompt_ids"]).endswith("<|im_start|>assistant\n")
    assert qwen3.decode(prepared.train[0]["chosen_ids"]) == f"<think>\ncheck\n</think>\n\nright{EOT}"
    assert qwen3.decode(prepared.train[0]["rejected_ids"]) == f"<think>\n\n</think>\n\nwrong{EOT}"
