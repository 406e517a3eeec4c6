"""Tokenize normalized examples with the model's own chat template and mark the loss tokens.

A chat is rendered once in full and tokenized once (``add_special_tokens=False``: the
template already holds bos and the special tokens). Which characters carry loss is found by
rendering prefixes: for a trained message i the span is
``[len(render(messages[:i], add_generation_prompt=True)), len(render(messages[:i+1])))``,
which includes the template's end-of-turn token (for SmolLM2 ``<|im_end|>``, which is eos
*and* pad, so eos is learned even though padding is masked). Characters map to tokens through
the fast tokenizer's offsets (``Encoding.char_to_token``), so a token that straddles a
boundary is never split. Trailing whitespace after the end-of-turn token is not trained.
"""

from __future__ import annotations

from typing import Any

import orjson

from nova.data.records import RecordProblem
from nova.errors import NovaError

IGNORE = -100
OK, TRUNCATED, TOO_LONG, NO_TRAINED = "", "truncated", "too_long", "no_trained_tokens"


# Public attributes of a Jinja ``loop`` object: reading them is always safe, so they skip the sandbox's
# per-access checks (the sandbox would allow each of them anyway).
_LOOP_ATTRIBUTES = frozenset({"index", "index0", "revindex", "revindex0", "first", "last", "length", "depth",
                              "depth0", "previtem", "nextitem"})


def _compile(source: str) -> Any:
    """The template compiled as apply_chat_template compiles it (same sandboxed environment), with
    two costs of rendering it 100,000s of times removed; the output is the same text:
    - the globals as a plain dict (Jinja keeps a ChainMap, copied key by key on every render);
    - ``loop.first`` and the other loop attributes read directly instead of through the sandbox.
    A private copy (not transformers' lru-cached one), so nothing outside nova is changed."""
    from jinja2.runtime import LoopContext
    from transformers.utils.chat_template_utils import _compile_jinja_template

    compile_fresh = getattr(_compile_jinja_template, "__wrapped__", _compile_jinja_template)
    template = compile_fresh(source)
    template.globals = dict(template.globals)
    env = template.environment
    sandboxed_getattr = env.getattr

    def getattr_(obj: Any, attribute: str) -> Any:
        if type(obj) is LoopContext and attribute in _LOOP_ATTRIBUTES:
            return getattr(obj, attribute)
        return sandboxed_getattr(obj, attribute)

    env.getattr = getattr_
    return template


class ChatTemplate:
    """The tokenizer's chat template, compiled once and rendered the way apply_chat_template does."""

    def __init__(self, tokenizer: Any, model_name: str) -> None:
        template = tokenizer.chat_template
        if isinstance(template, dict):
            template = template.get("default")
        if not template:
            raise NovaError(f"the tokenizer of {model_name} has no chat template",
                            hint="set model.chat_template to a Jinja template file, or use raw text data")
        self.source: str = template
        self.model_name = model_name
        # apply_chat_template passes the special tokens (bos_token, eos_token, ...) to the template
        self.kwargs = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
        self._compiled: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # The compiled Jinja template does not pickle; worker processes compile their own.
        return {**self.__dict__, "_compiled": None}

    def render(self, messages: list[dict[str, Any]], generation: bool = False) -> str:
        if self._compiled is None:
            self._compiled = _compile(self.source)
        try:
            return self._compiled.render(messages=messages, add_generation_prompt=generation, **self.kwargs)
        except Exception as exc:  # jinja TemplateError, raise_exception() from the template
            raise RecordProblem("template_error", f"the chat template of {self.model_name} failed: {exc}") from None

    def spans(self, messages: list[dict[str, Any]], train: list[bool]) -> tuple[str, list[tuple[int, int]]]:
        """The full rendered text and the character spans that carry loss."""
        full = self.render(messages)
        spans: list[tuple[int, int]] = []
        for i, trained in enumerate(train):
            if not trained:
                continue
            prefix = self.render(messages[:i], generation=messages[i]["role"] == "assistant")
            upto = full if i == len(messages) - 1 else self.render(messages[: i + 1])
            if not (full.startswith(upto) and upto.startswith(prefix)):
                raise RecordProblem(
                    "template_not_prefix_consistent",
                    f"the chat template of {self.model_name} renders message {i} differently once later "
                    "turns follow (it is not prefix-consistent), so the trained tokens cannot be located",
                    "templates that rewrite earlier turns (e.g. strip <think> from past replies) need "
                    "single-turn data or a model.chat_template that keeps history as is")
            end = len(upto)
            while end > len(prefix) and upto[end - 1].isspace():
                end -= 1  # a newline after <|im_end|> is formatting, not something to learn
            if end > len(prefix):
                spans.append((len(prefix), end))
        return full, spans


def _labels(ids: list[int], ranges: list[tuple[int, int]] | None) -> list[int]:
    """The label list: the token id where trained, IGNORE elsewhere."""
    if ranges is None:
        return list(ids)
    labels = [IGNORE] * len(ids)
    for a, b in ranges:
        labels[a:b] = ids[a:b]
    return labels


def _token_range(enc: Any, start: int, end: int) -> tuple[int, int] | None:
    """First and one-past-last token covering characters [start, end)."""
    first = enc.char_to_token(start)
    c = start
    while first is None and c + 1 < end:  # a character no token covers (rare): look further in
        c += 1
        first = enc.char_to_token(c)
    last = enc.char_to_token(end - 1)
    c = end - 1
    while last is None and c - 1 >= start:
        c -= 1
        last = enc.char_to_token(c)
    if first is None or last is None:
        return None
    return first, last + 1


class Encoder:
    """The batched map function: examples (JSON strings) -> token columns plus bookkeeping.

    Bookkeeping columns (``length`` before truncation, ``trained``/``masked`` after it, and
    ``status``) feed the report; rows whose status is a drop or an error are removed after
    the map by the caller, which counts them.
    """

    def __init__(self, tokenizer: Any, template: ChatTemplate | None, *, method: str, max_length: int,
                 overlong: str, loss_on: str, max_prompt_length: int = 0, max_completion_length: int = 0) -> None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise NovaError(f"the tokenizer {type(tokenizer).__name__} is not a fast tokenizer",
                            hint="nova needs a tokenizer.json (fast tokenizer) to locate trained tokens")
        self.backend = backend
        self.template = template
        self.method = method
        self.max_length = max_length
        self.overlong = overlong
        self.loss_on = loss_on
        self.max_prompt_length = max_prompt_length
        self.max_completion_length = max_completion_length
        self.eos_id: int | None = tokenizer.eos_token_id
        # No token is longer than the longest vocabulary entry, so text past this many characters
        # cannot reach the first max_length tokens: cutting it first keeps a 10 MB record from
        # costing seconds of tokenization (the record is still counted as overlong).
        longest = max((len(t) for t in tokenizer.get_vocab()), default=16)
        self.char_cap = (max(max_length, max_prompt_length, max_completion_length) + 16) * max(longest, 4) + 1024

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """datasets.map entry point: examples arrive as JSON strings (Arrow has no schema for chats)."""
        return self.encode([orjson.loads(e) for e in batch["example"]])

    def encode(self, examples: list[dict[str, Any]]) -> dict[str, list[Any]]:
        return self.finish(self.prepare(examples))

    def prepare(self, examples: list[dict[str, Any]]) -> Any:
        """The Python half: render chats and locate trained spans (holds the GIL)."""
        if self.method == "dpo":
            return self._render_dpo(examples)
        return self._render_sft(examples)

    def finish(self, prepared: Any, *, compact: bool = False) -> dict[str, list[Any]]:
        """The Rust half: tokenize (releases the GIL, so it overlaps the next batch's prepare).

        ``compact`` (SFT only): ``labels`` holds each row's trained token ranges (after truncation;
        None where every token is trained) instead of the label list, for a caller that builds
        the labels column in one vectorized step (see nova.data.pipeline)."""
        if self.method == "dpo":
            return self._dpo(prepared)
        return self._sft(prepared, compact)

    # ---- SFT -------------------------------------------------------------------------
    def _sft(self, prepared: Any, compact: bool = False) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {k: [] for k in ("input_ids", "labels", "length", "trained", "masked",
                                                     "status")}
        n, chats, texts, early = prepared
        rows: dict[int, tuple[list[int], list[tuple[int, int]] | None]] = {}
        encs = self.backend.encode_batch([c[1] for c in chats], add_special_tokens=False) if chats else []
        for (i, _, spans), enc in zip(chats, encs, strict=True):
            rows[i] = (enc.ids, self._chat_ranges(enc, spans))
        # Raw text: the tokenizer's own bos handling (add_special_tokens=True), then eos.
        encs = self.backend.encode_batch([t[1] for t in texts], add_special_tokens=True) if texts else []
        for (i, _), enc in zip(texts, encs, strict=True):
            rows[i] = (self._with_eos(enc.ids), None)
        for i in range(n):
            if i in early:
                self._emit(out, [], [], self.max_length + 1 if early[i] == TOO_LONG else 0, early[i], 0)
            else:
                self._finish(out, *rows[i], compact)
        return out

    def _render_sft(self, examples: list[dict[str, Any]]) -> tuple[
            int, list[tuple[int, str, list[tuple[int, int]]]], list[tuple[int, str]], dict[int, str]]:
        """(count, chats with their trained spans, raw texts, statuses decided before tokenizing)."""
        chats: list[tuple[int, str, list[tuple[int, int]]]] = []
        texts: list[tuple[int, str]] = []
        early: dict[int, str] = {}
        for i, ex in enumerate(examples):
            if ex["kind"] == "text":
                if len(ex["text"]) > self.char_cap and self.overlong == "drop":
                    early[i] = TOO_LONG
                else:
                    texts.append((i, ex["text"][: self.char_cap]))
                continue
            try:
                assert self.template is not None
                full, spans = self.template.spans(ex["messages"], ex["train"])
            except RecordProblem as exc:
                early[i] = f"error:{exc.reason}:{exc.message}"
                continue
            if len(full) > self.char_cap:
                if self.overlong == "drop":
                    early[i] = TOO_LONG
                    continue
                full = full[: self.char_cap]
                spans = [(a, min(b, self.char_cap)) for a, b in spans if a < self.char_cap]
            chats.append((i, full, spans))
        return len(examples), chats, texts, early

    def _chat_labels(self, enc: Any, full: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
        ids = enc.ids
        return ids, _labels(ids, self._chat_ranges(enc, spans))

    def _chat_ranges(self, enc: Any, spans: list[tuple[int, int]]) -> list[tuple[int, int]] | None:
        """The token ranges the character spans cover, in order and merged where they touch a
        shared token; None when every token is trained (loss_on: all)."""
        if self.loss_on == "all":
            return None
        ranges: list[tuple[int, int]] = []
        for start, end in spans:
            found = _token_range(enc, start, end)
            if found is None or found[1] <= found[0]:
                continue
            if ranges and found[0] <= ranges[-1][1]:
                ranges[-1] = (min(ranges[-1][0], found[0]), max(ranges[-1][1], found[1]))
            else:
                ranges.append(found)
        return ranges

    def _finish(self, out: dict[str, list[Any]], ids: list[int], ranges: list[tuple[int, int]] | None,
                compact: bool = False) -> None:
        length = len(ids)
        status = OK
        if length > self.max_length:
            if self.overlong == "drop":
                self._emit(out, [], [], length, TOO_LONG, 0)
                return
            cut = self.max_length
            ids, status = ids[:cut], TRUNCATED
            if ranges is not None:
                ranges = [(a, min(b, cut)) for a, b in ranges if a < cut]
        trained = len(ids) if ranges is None else sum(b - a for a, b in ranges)
        if trained == 0:
            self._emit(out, [], [], length, NO_TRAINED, 0)
            return
        self._emit(out, ids, ranges if compact else _labels(ids, ranges), length, status, trained)

    @staticmethod
    def _emit(out: dict[str, list[Any]], ids: list[int], labels: Any, length: int, status: str,
              trained: int) -> None:
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["length"].append(length)
        out["trained"].append(trained)
        out["masked"].append(len(ids) - trained)
        out["status"].append(status)

    # ---- DPO -------------------------------------------------------------------------
    def _render_dpo(self, examples: list[dict[str, Any]]) -> tuple[int, list[tuple[int, str, str, str]],
                                                                   dict[int, str]]:
        texts: list[tuple[int, str, str, str]] = []
        errors: dict[int, str] = {}
        for i, ex in enumerate(examples):
            try:
                texts.append((i, *self._dpo_texts(ex)))
            except RecordProblem as exc:
                errors[i] = f"error:{exc.reason}:{exc.message}"
        return len(examples), texts, errors

    def _dpo(self, prepared: Any) -> dict[str, list[Any]]:
        keys = ("prompt_ids", "chosen_ids", "rejected_ids", "length", "trained", "masked", "status",
                "prompt_cut", "completion_cut")
        out: dict[str, list[Any]] = {k: [] for k in keys}
        n, texts, errors = prepared
        flat = [t for _, p, c, r in texts for t in (p, c, r)]
        encs = self.backend.encode_batch(flat, add_special_tokens=False) if flat else []
        encoded = {texts[j][0]: [encs[3 * j + k].ids for k in range(3)] for j in range(len(texts))}
        for i in range(n):
            if i in errors:
                self._emit_dpo(out, [], [], [], 0, errors[i], False, False)
            else:
                self._finish_dpo(out, *encoded[i])
        return out

    def _dpo_texts(self, ex: dict[str, Any]) -> tuple[str, str, str]:
        assert self.template is not None
        prompt = self.template.render(ex["prompt"], generation=True)
        completions = []
        for side in ("chosen", "rejected"):
            full = self.template.render([*ex["prompt"], ex[side]])
            if not full.startswith(prompt):
                raise RecordProblem("template_not_prefix_consistent",
                                    f"the chat template of {self.template.model_name} does not render the prompt "
                                    "with add_generation_prompt as a prefix of the full chat",
                                    "set model.chat_template to a prefix-consistent template")
            completions.append(full[len(prompt):].rstrip()[: self.char_cap])
        return prompt[-self.char_cap:], completions[0], completions[1]

    def _finish_dpo(self, out: dict[str, list[Any]], prompt: list[int], chosen: list[int],
                    rejected: list[int]) -> None:
        chosen, rejected = self._with_eos(chosen), self._with_eos(rejected)
        length = len(prompt) + max(len(chosen), len(rejected))
        prompt_cut = len(prompt) > self.max_prompt_length
        prompt = prompt[-self.max_prompt_length:] if prompt_cut else prompt  # keep the end: the question
        completion_cut = max(len(chosen), len(rejected)) > self.max_completion_length
        chosen, rejected = chosen[: self.max_completion_length], rejected[: self.max_completion_length]
        status = TRUNCATED if prompt_cut or completion_cut else OK
        room = self.max_length - len(prompt)
        if len(prompt) + max(len(chosen), len(rejected)) > self.max_length:
            if self.overlong == "drop" or room <= 0:
                self._emit_dpo(out, [], [], [], length, TOO_LONG, False, False)
                return
            chosen, rejected, status, completion_cut = chosen[:room], rejected[:room], TRUNCATED, True
        self._emit_dpo(out, prompt, chosen, rejected, length, status, prompt_cut, completion_cut)

    def _with_eos(self, ids: list[int]) -> list[int]:
        if self.eos_id is not None and (not ids or ids[-1] != self.eos_id):
            return [*ids, self.eos_id]
        return list(ids)

    @staticmethod
    def _emit_dpo(out: dict[str, list[Any]], prompt: list[int], chosen: list[int], rejected: list[int],
                  length: int, status: str, prompt_cut: bool, completion_cut: bool) -> None:
        out["prompt_ids"].append(prompt)
        out["chosen_ids"].append(chosen)
        out["rejected_ids"].append(rejected)
        out["length"].append(length)
        out["trained"].append(len(chosen) + len(rejected))
        out["masked"].append(len(prompt))
        out["status"].append(status)
        out["prompt_cut"].append(prompt_cut)
        out["completion_cut"].append(completion_cut)
