"""GRPO: its spec and its ``grpo:`` section, the generation settings and the rewards that score each completion.

The rewards are a small language of their own: each entry is a built-in checked on strings
(``nova.train.methods.rewards``) or a function in the user's own Python file. Here only what can be
checked without running anything: the entry's shape, its regex, and that a reward file exists.
Importing that file is training's job, before the model loads (the file is the user's code, run as
trusted code).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from nova.config.base import MAX_TOKENS, Section
from nova.errors import printable
from nova.methods.spec import LearningRates, MethodSpec

Builtin = Literal["exact_match", "regex", "think_format", "length"]
# Arguments TRL passes to every reward function itself (and nova's prompt_ids): a record field of one of
# these names cannot reach a reward.
RESERVED_FIELDS = ("prompt", "prompts", "completion", "completions", "completion_ids", "trainer_state",
                   "log_extra", "log_metric", "environments", "prompt_ids")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PARAMS = {"exact_match": {"field"}, "regex": {"pattern"}, "think_format": set(), "length": {"target"}}


class RewardSpec(Section):
    """One reward: a built-in (``name``) or a function from the user's Python file (``file`` + ``function``)."""

    name: Builtin | None = Field(
        None, description="Built-in reward: 'exact_match' (1.0 when the completion's final answer equals the "
        "record's field, numbers compared as numbers), 'regex' (1.0 when pattern is found), 'think_format' (1.0 for "
        "<think>...</think> then an answer), 'length' (1.0 at target tokens, falling linearly to 0 at 0 and "
        "2 x target). Give either name or file.")
    file: str | None = Field(
        None, description="A Python file of your own with the reward function (run as trusted code, like a "
        "training script); relative to the directory nova runs in.")
    function: str | None = Field(
        None, description="With file: the function's name. It is called as f(prompts, completions, **fields) "
        "(TRL 1.x) and returns one float (or None: not scored) per completion.")
    field: str | None = Field(
        None, description="exact_match: the record field with the reference answer (default 'answer').")
    pattern: str | None = Field(None, description="regex: a Python regular expression (re.search; anchor it with "
                                "^ and $ to match the whole completion).")
    target: int | None = Field(None, gt=0, le=MAX_TOKENS, description="length: the completion length in tokens "
                               "that scores 1.0.")
    fields: list[str] = Field(
        default_factory=list, description="With file: record fields the function reads; every record must have "
        "them (checked at file:line before training).")
    weight: float = Field(1.0, ge=-1000, le=1000, description="Weight of this reward in the total reward.")

    @field_validator("file")
    @classmethod
    def _file_exists(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Not for a recorded config: it trained, and the file may have moved with the run since.
        if value is None or (info.context and info.context.get("recorded")):
            return value
        path = Path(value).expanduser()
        if path.suffix != ".py":
            raise ValueError(f"reward file {printable(value)} is not a .py file")
        if not path.is_file():
            raise ValueError(f"reward file not found: {printable(value)} (paths are relative to the directory "
                             "nova runs in)")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> RewardSpec:
        if (self.name is None) == (self.file is None):
            raise ValueError("a reward needs either name (a built-in: exact_match, regex, think_format, length) or "
                             "file + function (your own), not both")
        if self.file is not None:
            self._check_user()
        else:
            self._check_builtin()
        return self

    def _check_user(self) -> None:
        if not self.function or not _IDENTIFIER.match(self.function):
            raise ValueError(f"reward file {printable(self.file or '')} needs function: the name of a function in it")
        if self.field is not None or self.pattern is not None or self.target is not None:
            raise ValueError("field, pattern and target belong to built-in rewards; a reward file's function "
                             "names the record fields it reads in fields:")
        _check_fields(self.fields)

    def _check_builtin(self) -> None:
        assert self.name is not None
        given = {k for k in ("field", "pattern", "target") if getattr(self, k) is not None}
        if self.function is not None or self.fields:
            given |= {"function" if self.function is not None else "fields"}
        extra = given - _PARAMS[self.name]
        if extra:
            raise ValueError(f"reward {self.name} takes no {', '.join(sorted(extra))}")
        if self.name == "regex":
            if not self.pattern:
                raise ValueError("reward regex needs pattern: a regular expression")
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"reward regex: pattern {printable(self.pattern)} is not a valid regular "
                                 f"expression ({exc})") from None
        if self.name == "length" and self.target is None:
            raise ValueError("reward length needs target: the completion length in tokens that scores best")
        if self.field is not None:
            _check_fields([self.field])

    @property
    def label(self) -> str:
        """The reward's name in the metrics (rewards/<label>/mean): the built-in or the function."""
        return self.name or self.function or "reward"

    @property
    def reads(self) -> tuple[str, ...]:
        """Record fields every record must have for this reward."""
        if self.name == "exact_match":
            return (self.field or "answer",)
        return tuple(self.fields)


def _check_fields(names: list[str]) -> None:
    for name in names:
        if name in RESERVED_FIELDS:
            raise ValueError(f"record field '{name}' cannot be passed to a reward (TRL passes {name} itself); "
                             "rename the field in the data (data.datasets[].columns)")
        if not _IDENTIFIER.match(name):
            raise ValueError(f"'{printable(name)}' is not a usable field name (letters, digits, _)")


class GRPOConfig(Section):
    """Group Relative Policy Optimization settings (a ``grpo`` stage): the model answers each prompt
    num_generations times, the rewards score every answer, and answers better than their group's
    mean are made more likely."""

    num_generations: int = Field(
        4, ge=2, le=1024, description="Completions sampled per prompt (the group). Must divide the completions "
        "of one step, training.micro_batch_size x gradient_accumulation_steps.")
    max_prompt_length: int = Field(
        512, gt=0, le=MAX_TOKENS, description="Prompt tokens kept (the end of the prompt is kept; every cut is "
        "counted in the data report).")
    max_completion_length: int = Field(
        256, gt=0, le=MAX_TOKENS, description="Tokens generated per completion at most.")
    temperature: float = Field(1.0, gt=0, le=10, description="Sampling temperature of the generations.")
    beta: float = Field(
        0.0, ge=0, le=1000, description="Weight of the KL term toward the reference, the stage's starting point "
        "(as for DPO). 0 (TRL 1.x's default) holds no reference at all.")
    rewards: list[RewardSpec] = Field(
        default_factory=list, description="The rewards summed (with their weights) into each completion's "
        "reward; at least one for a grpo stage. See docs/methods.md.")
    use_vllm: bool = Field(
        False, description="Generate with vLLM (colocated, on the training GPU) when it is installed; off: the "
        "model itself generates (TRL's default path).")

    @property
    def reference_fields(self) -> tuple[str, ...]:
        """Record fields the rewards read: each record of a grpo stage must have them."""
        return tuple(dict.fromkeys(f for r in self.rewards for f in r.reads))


def batch_problem(grpo: GRPOConfig, micro_batch_size: int, accumulation: int) -> str | None:
    """A step's completions come in whole groups of num_generations, and a grpo stage needs a reward."""
    if not grpo.rewards:
        return ("method grpo needs grpo.rewards: at least one reward, e.g. [{name: exact_match, field: "
                "answer}] (docs/methods.md)")
    per_step = micro_batch_size * accumulation
    if per_step % grpo.num_generations:
        return (f"grpo.num_generations ({grpo.num_generations}) must divide the completions of one step, "
                         f"training.micro_batch_size x gradient_accumulation_steps = {micro_batch_size} x "
                         f"{accumulation} = {per_step}: each prompt's group must fit in one step (e.g. "
                         f"num_generations {_divisor(per_step)} or micro_batch_size {grpo.num_generations})")
    return None


def _divisor(n: int) -> int:
    """The largest divisor of n from 8 down to 2 (a suggestion for num_generations)."""
    return next((d for d in range(8, 1, -1) if n % d == 0), 2)


def _card(name: str, g: GRPOConfig) -> dict[str, Any]:
    return {"grpo_num_generations": g.num_generations, "grpo_beta": g.beta, "grpo_temperature": g.temperature,
            "grpo_rewards": " + ".join(f"{r.weight:g} x {r.label}" for r in g.rewards)}


def _group(g: GRPOConfig) -> int:
    return g.num_generations


SPEC = MethodSpec(
    name="grpo",
    typical_effective_batch=8,  # pairs or groups: each record is two or more sequences
    summary="its own sampled answers, the ones its rewards score above their group's mean made likelier",
    records="prompts",
    reference="start_if_beta",
    generates=True,
    section=GRPOConfig,
    lora_lr=LearningRates(1e-6, 1e-4, 1e-5),
    batch_problem=batch_problem,
    group_size=_group,
    memory_note="GRPO: one completion per sequence; generating them (and the KL reference) runs without gradients",
    card=_card,
    # GRPO's loss sits near 0 whatever it learns: its holdout reward is what is watched
    monitor_metric="eval_reward",
    before_loading="nova.train.methods.rewards:check_rewards",
    trainer="nova.train.methods.grpo:build_grpo_trainer",
)
