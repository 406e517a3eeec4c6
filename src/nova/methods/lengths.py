"""The prompt and reply token limits shared by the prompt-and-reply methods' sections (KTO, ORPO, SimPO)."""

from __future__ import annotations

from pydantic import Field

from nova.config.base import MAX_TOKENS, Section


class PromptLengths(Section):
    """The token limits of a prompt-and-reply stage (the data is cut to them, every cut counted)."""

    max_prompt_length: int = Field(
        512, gt=0, le=MAX_TOKENS, description="Prompt tokens kept (the end of the prompt is kept).")
    max_completion_length: int = Field(
        512, gt=0, le=MAX_TOKENS, description="Reply tokens kept (from the start).")
