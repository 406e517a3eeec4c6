"""The base every config section shares: unknown keys are errors, values are frozen."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

# Validation context for a config read back from a run directory (config.yaml): its data paths
# were checked when it trained, and a run moved to another machine must still load for merge/infer.
RECORDED = {"recorded": True}

S = TypeVar("S", bound="Section")


class Section(BaseModel):
    """A config section. ``extra='forbid'`` turns a typo into an error instead of a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    def changed(self: S, **updates: Any) -> S:
        """A copy with ``updates`` applied and validated again (``model_copy`` would skip validation).

        Used where nova itself changes a setting after loading (auto-fit, OOM retry, infer's
        quantization): the result obeys every rule a user-written config obeys. Only the keys
        the user set are carried over, so cross-field checks see the same "was it set" facts.
        """
        data = self.model_dump(exclude_unset=True)
        data.update(updates)
        return type(self).model_validate(data, context=RECORDED)
