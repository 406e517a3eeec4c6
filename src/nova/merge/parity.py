"""The parity checks of a merge: the same conversations through two models, compared logit by logit.

Each conversation is encoded with the chat template (as training saw it) and run one sequence at
a time, so there is no padding or attention mask to get wrong; the figure is the largest absolute
logit difference over every position of every conversation.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nova.errors import NovaError
from nova.lazy import require

MAX_PROMPT_TOKENS = 128


@dataclass
class Parity:
    """Max abs logit differences over the check prompts."""

    merged_vs_unmerged: float  # fp32 merged vs fp32 base + adapters: must be within tolerance
    saved_vs_merged_cast: float  # reloaded output vs the merged weights in the output dtype
    dtype_cost: float  # merged in the output dtype vs merged fp32 (informational)
    vs_trained: float | None  # merged fp32 vs the quantized trained composition (informational)
    prompts: int = 0
    tokens: int = 0


def encode_conversations(tokenizer: Any, conversations: Sequence[list[dict[str, str]]],
                         max_tokens: int = MAX_PROMPT_TOKENS) -> list[Any]:
    """Token ids (1 x n tensors) of each conversation rendered with the chat template, cut to ``max_tokens``."""
    torch = require("torch")
    encoded = []
    for messages in conversations:
        if getattr(tokenizer, "chat_template", None):
            prompt = messages[-1]["role"] != "assistant"
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
            ids = tokenizer(text, add_special_tokens=False).input_ids
        else:
            ids = tokenizer("\n".join(m["content"] for m in messages)).input_ids
        if ids:
            encoded.append(torch.tensor([ids[:max_tokens]], dtype=torch.long))
    return encoded


def compute_logits(model: Any, batches: Iterable[Any]) -> list[Any]:
    """fp32 logits on the CPU for each input (one sequence at a time: no padding to get wrong)."""
    torch = require("torch")
    device = next(model.parameters()).device
    out = []
    model.eval()
    with torch.no_grad():
        for ids in batches:
            logits = model(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device)).logits
            out.append(logits[0].float().cpu())
    return out


def max_abs_diff(a: Sequence[Any], b: Sequence[Any]) -> float:
    """The largest absolute difference between two lists of logit tensors of equal shapes."""
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def check_saved(tmp: Path, batches: list[Any], expected: list[Any], chat_template: bool) -> float:
    """Reload the written directory with plain transformers (no PEFT, no nova); return its logit diff."""
    transformers = require("transformers")
    torch = require("torch")
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp))
    except (OSError, ValueError) as exc:
        raise NovaError(f"the merged model does not reload with transformers: {exc}") from exc
    if chat_template and not getattr(tokenizer, "chat_template", None):
        raise NovaError("the merged model's tokenizer lost its chat template")
    diff = max_abs_diff(compute_logits(model, batches), expected)
    del model
    gc.collect()
    return diff
