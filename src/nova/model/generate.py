"""Generation with the chat template: what ``nova infer``, the smoke prompts and the demo answer with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nova.lazy import require


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0

    def generate_kwargs(self, tokenizer: Any) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens,
                                  "pad_token_id": tokenizer.pad_token_id,
                                  "repetition_penalty": self.repetition_penalty}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
            if self.top_k:
                kwargs["top_k"] = self.top_k
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs


def _render(tokenizer: Any, messages: list[dict[str, str]]) -> Any:
    if not getattr(tokenizer, "chat_template", None):
        text = "\n".join(m["content"] for m in messages)
        return tokenizer(text, return_tensors="pt").input_ids
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids


def text_streamer(tokenizer: Any) -> Any:
    """Print tokens as they are generated (the prompt itself is not echoed)."""
    transformers = require("transformers")
    return transformers.TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def generate_chat(model: Any, tokenizer: Any, messages: list[dict[str, str]],
                  sampling: Sampling | None = None, streamer: Any = None) -> str:
    """Answer one conversation; returns the assistant's new text."""
    torch = require("torch")
    sampling = sampling or Sampling()
    input_ids = _render(tokenizer, messages).to(model.device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer,
                             **sampling.generate_kwargs(tokenizer))
    if was_training:
        model.train()
    return tokenizer.decode(out[0, input_ids.shape[1]:], skip_special_tokens=True).strip()


def generate_answers(model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int = 128,
                     sampling: Sampling | None = None) -> list[str]:
    sampling = sampling or Sampling(max_new_tokens=max_new_tokens)
    return [generate_chat(model, tokenizer, [{"role": "user", "content": p}], sampling) for p in prompts]
