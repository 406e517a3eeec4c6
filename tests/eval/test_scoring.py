"""Scoring: the batched, shared-prefix log-likelihoods equal a plain forward; the metrics pick what they should;
gates compare in each task's direction; eval.json keeps only what still compares."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from nova.config.eval_schema import EvalConfig, EvalTaskConfig
from nova.eval.gates import _check
from nova.eval.items import Item
from nova.eval.score import _choice_accuracy, _pair_accuracy
from nova.runs.eval_results import merge_results, table_lines


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_shared_prefix_loglik_equals_a_plain_forward(tiny: tuple[Any, Any]) -> None:
    import torch

    from nova.eval.backend import HFBackend

    model, tokenizer = tiny
    rng = random.Random(0)
    requests = []
    for _ in range(9):  # contexts of several lengths, each with 1 to 4 continuations of several lengths
        ctx = [rng.randrange(10, 300) for _ in range(rng.randint(1, 24))]
        for _ in range(rng.randint(1, 4)):
            requests.append((ctx, [rng.randrange(10, 300) for _ in range(rng.randint(1, 7))]))
    got = HFBackend(model, tokenizer).loglik(requests)
    for (ctx, cont), (value, greedy) in zip(requests, got, strict=True):
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0].double(), -1)
        rows = [logprobs[len(ctx) + j - 1] for j in range(len(cont))]
        assert value == pytest.approx(sum(float(r[t]) for r, t in zip(rows, cont, strict=True)), abs=1e-4)
        assert greedy == all(int(r.argmax()) == t for r, t in zip(rows, cont, strict=True))


def test_batched_generation_equals_one_at_a_time(tiny: tuple[Any, Any]) -> None:
    import torch

    from nova.eval.backend import HFBackend

    model, tokenizer = tiny
    rng = random.Random(1)  # prompts of several lengths (left padding) whose replies differ (order kept)
    prompts = [[rng.randrange(10, 300) for _ in range(n)] for n in (5, 1, 3, 12, 7)]
    batched = HFBackend(model, tokenizer).generate(prompts, 6)
    assert len({tuple(b) for b in batched}) > 1
    for prompt, out in zip(prompts, batched, strict=True):
        with torch.no_grad():
            alone = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False,
                                   pad_token_id=tokenizer.pad_token_id)[0, len(prompt):].tolist()
        stop = tokenizer.eos_token_id
        assert out == (alone[: alone.index(stop)] if stop in alone else alone)


class FakeBackend:
    """Log-likelihoods from a table: (context, continuation) -> value."""

    def __init__(self, values: dict[tuple[tuple[int, ...], tuple[int, ...]], float]) -> None:
        self.values = values

    def loglik(self, requests: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        return [(self.values[(tuple(c), tuple(t))], False) for c, t in requests]


class FakePrompter:
    def reply(self, item: Item, text: str) -> tuple[list[int], list[int]]:
        return [len(item.prompt)], [len(text)]


def test_choice_is_picked_per_character_and_pairs_by_likelihood() -> None:
    item = Item("q", choices=("a", "bbbbbbbbbb"), gold=1)  # the long choice is less likely in total, not per char
    backend = FakeBackend({((1,), (1,)): -2.0, ((1,), (10,)): -5.0})
    assert _choice_accuracy([item], backend, FakePrompter()) == 1.0  # type: ignore[arg-type]
    assert _pair_accuracy([(-1.0, False), (-2.0, False), (-3.0, False), (-2.5, False)]) == 0.5


def test_gates_compare_in_the_task_direction() -> None:
    acc = {"metric": "accuracy", "higher_is_better": True}
    loss = {"metric": "loss", "higher_is_better": False}
    scores = {"base": {"t": 0.5}, "a": {"t": 0.44}}
    assert not _check(EvalTaskConfig(task="t", max_drop=0.05), "t", acc, scores, "a", "base")["passed"]
    assert _check(EvalTaskConfig(task="t", max_drop=0.07), "t", acc, scores, "a", "base")["passed"]
    assert not _check(EvalTaskConfig(task="t", min=0.45), "t", acc, scores, "a", "base")["passed"]
    # a loss that went down is better, whatever max_drop says; one above min fails
    assert _check(EvalTaskConfig(task="t", max_drop=0.0), "t", loss, scores, "a", "base")["passed"]
    assert not _check(EvalTaskConfig(task="t", max_drop=0.0), "t", loss, {"base": {"t": 0.4}, "a": {"t": 0.44}},
                      "a", "base")["passed"]
    assert not _check(EvalTaskConfig(task="t", min=0.4), "t", loss, scores, "a", "base")["passed"]


def test_eval_section_refuses_a_task_twice_and_typos() -> None:
    with pytest.raises(ValueError, match="more than once"):
        EvalConfig(tasks=[EvalTaskConfig(task="x"), EvalTaskConfig(task="x")])
    with pytest.raises(ValueError, match="max_drp"):
        EvalTaskConfig.model_validate({"task": "x", "max_drp": 0.1})


def test_stored_results_keep_only_what_still_compares() -> None:
    old = {"tasks": {"t": {"signature": "s1"}, "u": {"signature": "u1"}},
           "models": [{"name": "base", "key": "k", "scores": {"t": 0.5, "u": 0.1}},
                      {"name": "a", "key": "old-weights", "scores": {"t": 0.6, "u": 0.2}}]}
    new = {"tasks": {"t": {"signature": "s2"}}, "models": [{"name": "a", "key": "new", "scores": {"t": 0.7}}]}
    merged = merge_results(old, new)
    rows = {m["name"]: m["scores"] for m in merged["models"]}
    assert rows == {"base": {"u": 0.1}, "a": {"t": 0.7}}  # t changed items: base's old t is gone; a retrained


def test_table_cells_carry_changes_against_base_and_previous() -> None:
    results = {"tasks": {"t": {"metric": "accuracy", "items": 50}},
               "models": [{"name": "base", "parent": None, "scores": {"t": 0.5}},
                          {"name": "doica", "parent": "base", "scores": {"t": 0.6}},
                          {"name": "sora", "parent": "doica", "scores": {"t": 0.55}}]}
    lines = table_lines(results)
    assert lines[0].split() == ["model", "t", "(acc,", "n=50)"]
    assert lines[1].split() == ["base", "0.500"]
    assert lines[2].split() == ["doica", "0.600", "(b", "+0.100)"]
    assert lines[3].split() == ["sora", "0.550", "(b", "+0.050,", "p", "-0.050)"]
