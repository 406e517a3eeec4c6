"""What nova knows about a training method, in one frozen record: ``MethodSpec``.

Every part of nova that behaves differently per method asks the method's spec instead of
comparing method names: the config schema (its settings section, batch rules, whether full
fine-tuning runs it), the data pipeline (the records it reads), preflight (memory terms,
learning-rate ranges, the schedule), training (whether a stage keeps a reference, the trainer),
the monitor (the metric it watches) and model cards (the settings they show).
``tests/test_architecture.py`` fails when code outside ``nova.methods`` and the config schema
compares method names.

Nothing here imports torch, pydantic or the config schema (``nova --help`` lists the methods
without them): the schema imports the specs, and the trainer is named by its module path
(``module:function``), imported only when a stage trains.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

# The shape of one training row, which decides the formats a method reads (nova.data.formats):
# sequences (chats and text, every trained token learned), pairs (a prompt with a chosen and a rejected
# reply), feedback (one reply and a yes/no verdict), prompts (a prompt the model answers itself).
Records = Literal["sequences", "pairs", "feedback", "prompts"]
# Whether a stage keeps a reference, and when: never, always, or only when its section's beta > 0.
# The reference is always the stage's starting point (earlier phases plus this phase's adapter as the
# stage began); never the raw base.
Reference = Literal["none", "start", "start_if_beta"]


@dataclass(frozen=True)
class LearningRates:
    """A typical learning rate range and the rate to suggest (preflight warns outside the range)."""

    low: float
    high: float
    suggested: float


def show_settings(*keys: str) -> Callable[[str, Any], dict[str, Any]]:
    """A model card's settings of a method: the named keys of its section, as ``<method>_<key>``."""

    def card(name: str, section: Any) -> dict[str, Any]:
        return {f"{name}_{key}": getattr(section, key) for key in keys}

    return card


def _no_card(name: str, section: Any) -> dict[str, Any]:
    return {}


def _no_batch_rule(section: Any, micro_batch_size: int, accumulation: int) -> str | None:
    return None


def _one(section: Any) -> int:
    return 1


@dataclass(frozen=True)
class MethodSpec:
    """One training method: what it reads, keeps, generates, allows, costs, shows, watches and runs."""

    name: str  # the value of a stage's ``method:`` key; also its settings section's key and its stage name
    summary: str  # what it learns, one line (``nova config``, docs/methods.md)
    records: Records  # what one training row is (nova.data.formats decides which file formats give it)
    lora_lr: LearningRates  # typical learning rates with LoRA
    trainer: str  # ``module:function`` building its TRL trainer (nova.train.methods), imported when it trains
    section: type[Any] | None = None  # its settings section, a config Section (a stage key of the method's name)
    paired: bool = False  # chosen and rejected of a record run in one batch: two sequences per record
    reference: Reference = "none"
    generates: bool = False  # the model writes its own completions while training (no trained tokens in the data)
    full_lr: LearningRates | None = None  # full fine-tuning (adapter: full) runs it, with these rates; None: refused
    # the batch rule its config must obey: (section, micro batch, accumulation) -> the problem, or None
    batch_problem: Callable[[Any, int, int], str | None] = _no_batch_rule
    min_micro_batch: Callable[[Any], int] = _one  # auto-fit and the OOM retry stay at or above it
    group_size: Callable[[Any], int] = _one  # sequences per record in a step (GRPO: its num_generations)
    memory_note: str = ""  # what preflight's estimate says about the method's step
    card: Callable[[str, Any], dict[str, Any]] = field(default=_no_card)  # settings its model card shows
    monitor_metric: str = "eval_loss"  # the holdout metric alerts and early stopping watch
    typical_effective_batch: int = 16  # records per optimizer step a first config starts from (nova init)
    before_loading: str | None = None  # ``module:function`` checking its inputs before a model loads

    @property
    def full(self) -> bool:
        """Whether full fine-tuning (adapter: full) runs this method."""
        return self.full_lr is not None

    @property
    def trains_sequences(self) -> bool:
        """SFT-like: it learns its data's own tokens, so earlier phases' data can be replayed into it and
        its holdout loss is the phase's own (the forgetting table, ``nova infer --eval``)."""
        return self.records == "sequences"

    @property
    def cuts_prompts(self) -> bool:
        """Its data is cut to its section's max_prompt_length and max_completion_length (TRL's limits)."""
        return self.records != "sequences"

    def keeps_reference(self, section: Any) -> bool:
        """Whether a stage of this method scores a reference (the stage's starting point)."""
        if self.reference == "start_if_beta":
            return float(section.beta) > 0
        return self.reference == "start"

    def card_settings(self, section: Any) -> dict[str, Any]:
        """The method's own settings shown in a model card (besides the schedule every stage shows)."""
        return self.card(self.name, section) if section is not None else {}

