"""The base every config section shares: unknown keys are errors, values are frozen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section. ``extra='forbid'`` turns a typo into an error instead of a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
