"""GRPO's rewards on plain strings, and the user's reward files: loading, calling, and every way they fail."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nova.errors import ConfigError, NovaError
from nova.methods.grpo import GRPOConfig, RewardSpec
from nova.train.methods.rewards import (
    build_rewards,
    completion_text,
    exact_match_score,
    final_answer,
    length_score,
    parse_number,
    regex_score,
    think_format_score,
)


@pytest.mark.parametrize(("completion", "reference", "score"), [
    ("42", "42", 1.0),
    ("The answer is 42.", "42", 1.0),  # the last number of the answer
    ("17 + 25 = 42", 42, 1.0),  # a numeric reference is compared as a number
    ("42.0", "42", 1.0),
    ("1,000", "1000", 1.0),
    ("-8", "-8", 1.0),
    ("41", "42", 0.0),
    ("42 or 43", "42", 0.0),  # the last number counts, not any number
    ("no idea", "42", 0.0),
    ("<think>maybe 40</think> 42", "42", 1.0),  # reasoning is not the answer
    ("<think>it is 42</think> 40", "42", 0.0),
    ("so \\boxed{42} and 7 more", "42", 1.0),  # a boxed answer wins
    ("  Paris. ", "paris", 1.0),  # text: case, spaces, edge punctuation ignored
    ("Lyon", "Paris", 0.0),
])
def test_exact_match_normalizes_numbers_and_text(completion: str, reference: object, score: float) -> None:
    assert exact_match_score(completion, reference) == score


def test_numbers_and_final_answers_parse_as_written() -> None:
    assert parse_number("1,234.5") == 1234.5 and parse_number(" 7 ") == 7.0 and parse_number("7a") is None
    assert final_answer("<think>x</think>y") == "y" and final_answer("plain") == "plain"


def test_regex_think_format_and_length_score_strings() -> None:
    digits = re.compile(r"^\s*-?\d+\s*$")
    assert regex_score(" 42 ", digits) == 1.0 and regex_score("42 apples", digits) == 0.0
    assert think_format_score("<think>add them</think>\n42") == 1.0
    assert think_format_score("42") == 0.0  # no reasoning block
    assert think_format_score("<think> </think>42") == 0.0  # empty reasoning
    assert think_format_score("<think>a</think>") == 0.0  # no answer after it
    assert think_format_score("<think>a</think>b<think>c</think>d") == 0.0  # one block only
    assert [length_score(n, 10) for n in (10, 5, 15, 0, 20, 30)] == [1.0, 0.5, 0.5, 0.0, 0.0, 0.0]


def test_completions_are_read_as_text_or_chat_messages() -> None:
    assert completion_text("x") == "x"
    assert completion_text([{"role": "assistant", "content": "y"}]) == "y"


def test_builtins_follow_trls_calling_convention_and_log_apart() -> None:
    grpo = GRPOConfig(rewards=[RewardSpec(name="exact_match"), RewardSpec(name="regex", pattern="4"),
                               RewardSpec(name="regex", pattern="x"), RewardSpec(name="length", target=2,
                                                                                 weight=0.5)])
    functions, weights = build_rewards(grpo)
    assert [f.__name__ for f in functions] == ["exact_match", "regex", "regex_2", "length"]  # rewards/<name>/mean
    assert weights == [1.0, 1.0, 1.0, 0.5]
    completions = [[{"role": "assistant", "content": "42"}], [{"role": "assistant", "content": "x"}]]
    kwargs = {"prompts": [[], []], "completions": completions, "completion_ids": [[1, 2], [1, 2, 3, 4]],
              "answer": ["42", "42"], "trainer_state": None}
    assert [f(**kwargs) for f in functions] == [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]


def user_reward(tmp_path: Path, source: str, function: str = "correct") -> GRPOConfig:
    path = tmp_path / "rewards.py"
    path.write_text(source)
    return GRPOConfig(rewards=[RewardSpec(file=str(path), function=function, fields=["answer"])])


def test_a_user_reward_gets_the_record_fields_and_may_skip_completions(tmp_path: Path) -> None:
    grpo = user_reward(tmp_path, "def correct(prompts, completions, answer, **kwargs):\n"
                                 "    return [None if a == 'skip' else float(c[0]['content'] == a)\n"
                                 "            for c, a in zip(completions, answer)]\n")
    (fn,), _ = build_rewards(grpo)
    assert fn.__name__ == "correct"
    out = fn(prompts=[[]] * 3, completions=[[{"content": "4"}]] * 3, answer=["4", "5", "skip"], trainer_state=None)
    assert out == [1.0, 0.0, None]


@pytest.mark.parametrize(("source", "function", "message"), [
    ("def other(prompts, completions, **kw):\n    return []\n", "correct",
     "has no function 'correct' (functions in it: other)"),
    ("correct = 3\n", "correct", "'correct' is a int, not a function"),
    ("def correct(:\n", "correct", "importing it raised SyntaxError (line 1)"),
    ("import no_such_module_for_nova\n", "correct", "importing it raised ModuleNotFoundError"),
])
def test_a_broken_reward_file_is_one_config_error_naming_file_and_fix(tmp_path: Path, source: str, function: str,
                                                                       message: str) -> None:
    grpo = user_reward(tmp_path, source, function)
    with pytest.raises(ConfigError) as err:
        build_rewards(grpo, "stages[1].grpo.rewards")
    lines = err.value.lines()
    assert len(lines) == 1 and lines[0].isascii()
    assert "stages[1].grpo.rewards[0]" in lines[0] and "rewards.py" in lines[0] and message in lines[0]


def test_a_reward_file_that_vanished_after_the_config_loaded_is_a_config_error(tmp_path: Path) -> None:
    grpo = user_reward(tmp_path, "def correct(prompts, completions, **kw):\n    return []\n")
    (tmp_path / "rewards.py").unlink()
    with pytest.raises(ConfigError, match="not found"):
        build_rewards(grpo)


@pytest.mark.parametrize(("body", "message"), [
    ("raise ValueError('bad')", "raised ValueError: bad"),
    ("return [1.0]", "returned 1 for 2 completions"),
    ("return 'yes'", "returned str for 2 completions"),
    ("return ['a', 'b']", "returned str values"),
])
def test_a_reward_that_fails_while_training_says_which_and_why(tmp_path: Path, body: str, message: str) -> None:
    grpo = user_reward(tmp_path, f"def correct(prompts, completions, **kwargs):\n    {body}\n")
    (fn,), _ = build_rewards(grpo)
    with pytest.raises(NovaError, match=re.escape(message)) as err:
        fn(prompts=[[], []], completions=["a", "b"], answer=["1", "2"])
    assert "correct" in err.value.message and "rewards.py" in err.value.message
