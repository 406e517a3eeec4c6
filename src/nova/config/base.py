"""The base every config section shares: unknown keys are errors, values are frozen."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

# Validation context for a config read back from a run directory (config.yaml): its data paths
# were checked when it trained, and a run moved to another machine must still load for merge/infer.
RECORDED = {"recorded": True}

S = TypeVar("S", bound="Section")


# Upper bounds of counts: far above any real run (10 million steps is a month at 4 steps/s), low
# enough that a typo like 1e26 fails at load, not as an overflow deep inside a library.
MAX_STEPS = 10_000_000
MAX_TOKENS = 1_048_576  # sequence lengths
MAX_BATCH = 65_536  # sequences in one forward pass or micro batches in one step
MAX_RECORDS = 1_000_000_000


class Section(BaseModel):
    """A config section. ``extra='forbid'`` turns a typo into an error instead of a silent default;
    ``allow_inf_nan=False`` refuses ``.inf``/``.nan`` (and numbers YAML reads as infinite, like 1e999)
    for every float, where a learning rate of inf would train to NaN without a word."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)

    def changed(self: S, **updates: Any) -> S:
        """A copy with ``updates`` applied and validated again (``model_copy`` would skip validation).

        Used where nova itself changes a setting after loading (auto-fit, OOM retry, infer's
        quantization): the result obeys every rule a user-written config obeys. Only the keys
        the user set are carried over, so cross-field checks see the same "was it set" facts.
        """
        data = self.model_dump(exclude_unset=True)
        data.update(updates)
        return type(self).model_validate(data, context=RECORDED)
