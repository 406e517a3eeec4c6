"""Tokenize normalized examples with the model's own chat template and mark the loss tokens.

A chat becomes one sequence, or one per trained reply for templates that rewrite history
(nova.data.turns decides, and finds the characters that carry loss: each reply including the
template's end-of-turn token, for SmolLM2 ``<|im_end|>``, which is eos *and* pad, so eos is
learned even though padding is masked). Each sequence is tokenized once
(``add_special_tokens=False``: the template already holds bos and the special tokens), and
characters map to tokens through the fast tokenizer's offsets (``Encoding.char_to_token``),
so a token that straddles a boundary is never split.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson

from nova.data.records import RecordProblem
from nova.data.template import ChatTemplate
from nova.data.turns import Sequence, TurnSettings, chat_sequences, options, reply_texts
from nova.errors import NovaError
from nova.methods import method_spec

__all__ = ["IGNORE", "ChatTemplate", "Encoder"]

IGNORE = -100
OK, TRUNCATED, TOO_LONG, NO_TRAINED = "", "truncated", "too_long", "no_trained_tokens"


def error_status(exc: RecordProblem) -> str:
    """A record's problem as its status string (statuses travel through Arrow): reason, message and fix."""
    return f"error:{exc.reason}:{exc.message}" + (f"\x1f{exc.hint}" if exc.hint else "")


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


_SFT_COLUMNS = ("input_ids", "labels", "length", "trained", "masked", "status", "row", "reasoning", "per_turn",
                "empty_think")
# (has reasoning, sequences its chat became when rendered turn by turn (on its first row), empty think
# blocks left untrained) of a row that is not a chat sequence.
_PLAIN = (False, 0, 0)


class Encoder:
    """The batched map function: examples (JSON strings) -> token columns plus bookkeeping.

    Bookkeeping columns (``length`` before truncation, ``trained``/``masked`` after it, and
    ``status``) feed the report; rows whose status is a drop or an error are removed after
    the map by the caller, which counts them.
    """

    def __init__(self, tokenizer: Any, template: ChatTemplate | None, *, method: str, max_length: int,
                 overlong: str, loss_on: str, max_prompt_length: int = 0, max_completion_length: int = 0,
                 turns: TurnSettings | None = None) -> None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise NovaError(f"the tokenizer {type(tokenizer).__name__} is not a fast tokenizer",
                            hint="nova needs a tokenizer.json (fast tokenizer) to locate trained tokens")
        self.backend = backend
        self.template = template
        self.method = method
        self.records = method_spec(method).records  # the row shape decides the encoding
        self.max_length = max_length
        self.overlong = overlong
        self.loss_on = loss_on
        self.max_prompt_length = max_prompt_length
        self.max_completion_length = max_completion_length
        self.turns = turns or TurnSettings()
        self.eos_id: int | None = tokenizer.eos_token_id
        # No token is longer than the longest vocabulary entry, so text past this many characters
        # cannot reach the first max_length tokens: cutting it first keeps a 10 MB record from
        # costing seconds of tokenization (the record is still counted as overlong).
        longest = max((len(t) for t in tokenizer.get_vocab()), default=16)
        self.char_cap = (max(max_length, max_prompt_length, max_completion_length) + 16) * max(longest, 4) + 1024
        self.turns = replace(self.turns, char_cap=self.char_cap)

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """datasets.map entry point: examples arrive as JSON strings (Arrow has no schema for chats).
        A chat may become several rows, so the ``where`` column is carried along row by row."""
        out = self.encode([orjson.loads(e) for e in batch["example"]])
        if "where" in batch:
            out["where"] = [batch["where"][i] for i in out["row"]]
        return out

    def encode(self, examples: list[dict[str, Any]]) -> dict[str, list[Any]]:
        return self.finish(self.prepare(examples))

    def prepare(self, examples: list[dict[str, Any]]) -> Any:
        """The Python half: render chats and locate trained spans (holds the GIL)."""
        if self.records == "prompts":
            return self._render_prompts(examples)
        if self.records == "feedback":
            return self._render_kto(examples)
        if self.records == "pairs":
            return self._render_dpo(examples)
        return self._render_sft(examples)

    def finish(self, prepared: Any, *, compact: bool = False) -> dict[str, list[Any]]:
        """The Rust half: tokenize (releases the GIL, so it overlaps the next batch's prepare).

        Every output row has ``row``, the index of the example it came from (a chat may give
        several rows, an example with a problem gives one). ``compact`` (SFT only): ``labels``
        holds each row's trained token ranges (after truncation; None where every token is
        trained) instead of the label list, for a caller that builds the labels column in one
        vectorized step (see nova.data.pipeline)."""
        if self.records == "prompts":
            return self._prompts(prepared)
        if self.records == "feedback":
            return self._kto(prepared)
        if self.records == "pairs":
            return self._dpo(prepared)
        return self._sft(prepared, compact)

    # ---- SFT -------------------------------------------------------------------------
    def _sft(self, prepared: Any, compact: bool = False) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {k: [] for k in _SFT_COLUMNS}
        n, chats, texts, early = prepared
        rows: dict[int, list[tuple[list[int] | None, list[tuple[int, int]] | None, tuple[bool, int, int]]]] = {}
        fits = [c for c in chats if c[1] is not None]
        encs = self.backend.encode_batch([c[1] for c in fits], add_special_tokens=False) if fits else []
        by_text = iter(encs)
        for i, text, spans, meta in chats:
            if text is None:  # beyond char_cap and overlong: drop
                rows.setdefault(i, []).append((None, None, meta))
                continue
            enc = next(by_text)
            rows.setdefault(i, []).append((enc.ids, self._chat_ranges(enc, spans), meta))
        # Raw text: the tokenizer's own bos handling (add_special_tokens=True), then eos.
        encs = self.backend.encode_batch([t[1] for t in texts], add_special_tokens=True) if texts else []
        for (i, _), enc in zip(texts, encs, strict=True):
            rows[i] = [(self._with_eos(enc.ids), None, _PLAIN)]
        for i in range(n):
            if i in early:
                self._emit(out, i, _PLAIN, [], [], self.max_length + 1 if early[i] == TOO_LONG else 0, early[i], 0)
                continue
            for ids, ranges, meta in rows[i]:
                if ids is None:
                    self._emit(out, i, meta, [], [], self.max_length + 1, TOO_LONG, 0)
                else:
                    self._finish(out, i, meta, ids, ranges, compact)
        return out

    def _render_sft(self, examples: list[dict[str, Any]]) -> tuple[
            int, list[tuple[int, str | None, list[tuple[int, int]], tuple[bool, int, int]]], list[tuple[int, str]],
            dict[int, str]]:
        """(count, chat sequences with their trained spans, raw texts, statuses decided before tokenizing)."""
        chats: list[tuple[int, str | None, list[tuple[int, int]], tuple[bool, int, int]]] = []
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
                sequences, per_turn = self._sequences(ex)
            except RecordProblem as exc:
                early[i] = error_status(exc)
                continue
            if not per_turn and len(sequences[0].text) <= self.char_cap:  # the common case, kept lean
                seq = sequences[0]
                chats.append((i, seq.text, seq.spans, (seq.reasoning, 0, seq.empty_think)))
                continue
            for k, seq in enumerate(sequences):
                meta = (seq.reasoning, len(sequences) if per_turn and k == 0 else 0, seq.empty_think)
                chats.append((i, *self._capped(seq), meta))
        return len(examples), chats, texts, early

    def _capped(self, seq: Sequence) -> tuple[str | None, list[tuple[int, int]]]:
        """The sequence cut to char_cap (None: too long, under overlong: drop)."""
        if len(seq.text) <= self.char_cap:
            return seq.text, seq.spans
        if self.overlong == "drop":
            return None, []
        return seq.text[: self.char_cap], [(a, min(b, self.char_cap)) for a, b in seq.spans if a < self.char_cap]

    def _sequences(self, ex: dict[str, Any]) -> tuple[list[Sequence], bool]:
        """The chat's sequences; with loss_on: all, the whole rendering, every token trained."""
        assert self.template is not None
        if self.loss_on == "all":
            text = self.template.render(self.template.template_messages(ex["messages"]), options=options(ex))
            return [Sequence(text, [(0, len(text))], bool(ex.get("reasoning")))], False
        return chat_sequences(self.template, ex, self.turns)

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

    def _finish(self, out: dict[str, list[Any]], row: int, meta: tuple[bool, int, int], ids: list[int],
                ranges: list[tuple[int, int]] | None, compact: bool = False) -> None:
        length = len(ids)
        status = OK
        if length > self.max_length:
            if self.overlong == "drop":
                self._emit(out, row, meta, [], [], length, TOO_LONG, 0)
                return
            cut = self.max_length
            ids, status = ids[:cut], TRUNCATED
            if ranges is not None:
                ranges = [(a, min(b, cut)) for a, b in ranges if a < cut]
        trained = len(ids) if ranges is None else sum(b - a for a, b in ranges)
        if trained == 0:
            self._emit(out, row, meta, [], [], length, NO_TRAINED, 0)
            return
        self._emit(out, row, meta, ids, ranges if compact else _labels(ids, ranges), length, status, trained)

    @staticmethod
    def _emit(out: dict[str, list[Any]], row: int, meta: tuple[bool, int, int], ids: list[int], labels: Any,
              length: int, status: str, trained: int) -> None:
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["length"].append(length)
        out["trained"].append(trained)
        out["masked"].append(len(ids) - trained)
        out["status"].append(status)
        out["row"].append(row)
        out["reasoning"].append(meta[0])
        out["per_turn"].append(meta[1])
        out["empty_think"].append(meta[2])

    # ---- DPO -------------------------------------------------------------------------
    def _render_dpo(self, examples: list[dict[str, Any]]) -> tuple[int, list[tuple[int, str, str, str]],
                                                                   dict[int, str]]:
        texts: list[tuple[int, str, str, str]] = []
        errors: dict[int, str] = {}
        for i, ex in enumerate(examples):
            try:
                texts.append((i, *self._dpo_texts(ex)))
            except RecordProblem as exc:
                errors[i] = error_status(exc)
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
        out["row"] = list(range(n))  # one row per preference pair
        return out

    def _dpo_texts(self, ex: dict[str, Any]) -> tuple[str, str, str]:
        """The prompt and both replies, each reply written as the final turn after the prompt."""
        assert self.template is not None
        prompt, chosen = reply_texts(self.template, ex["prompt"], ex["chosen"])
        other_prompt, rejected = reply_texts(self.template, ex["prompt"], ex["rejected"])
        if other_prompt != prompt:
            raise RecordProblem("template_not_prefix_consistent",
                                f"the chat template of {self.template.model_name} writes the prompt differently "
                                "before the chosen and the rejected reply", "set model.chat_template to a template "
                                "that writes the prompt the same way before any reply")
        return prompt[-self.char_cap:], chosen[: self.char_cap], rejected[: self.char_cap]

    def _finish_dpo(self, out: dict[str, list[Any]], prompt: list[int], chosen: list[int],
                    rejected: list[int]) -> None:
        prompt, (chosen, rejected), length, status, prompt_cut, completion_cut = self._cut(prompt, [chosen, rejected])
        if status == TOO_LONG:
            self._emit_dpo(out, [], [], [], length, TOO_LONG, False, False)
            return
        self._emit_dpo(out, prompt, chosen, rejected, length, status, prompt_cut, completion_cut)

    def _cut(self, prompt: list[int], replies: list[list[int]]) -> tuple[
            list[int], list[list[int]], int, str, bool, bool]:
        """(prompt, replies, length before cuts, status, prompt cut, reply cut) of one prompt and its
        replies (each ending in eos): the prompt keeps its end (the question), a reply its start, and
        together they fit max_length (or the status is TOO_LONG under overlong: drop)."""
        replies = [self._with_eos(r) for r in replies]
        length = len(prompt) + max(map(len, replies))
        prompt_cut = len(prompt) > self.max_prompt_length
        prompt = prompt[-self.max_prompt_length:] if prompt_cut else prompt
        completion_cut = max(map(len, replies)) > self.max_completion_length
        replies = [r[: self.max_completion_length] for r in replies]
        status = TRUNCATED if prompt_cut or completion_cut else OK
        room = self.max_length - len(prompt)
        if len(prompt) + max(map(len, replies)) > self.max_length:
            if self.overlong == "drop" or room <= 0:
                return prompt, replies, length, TOO_LONG, False, False
            replies, status, completion_cut = [r[:room] for r in replies], TRUNCATED, True
        return prompt, replies, length, status, prompt_cut, completion_cut

    # ---- KTO (unpaired) ---------------------------------------------------------------
    def _render_kto(self, examples: list[dict[str, Any]]) -> tuple[int, list[tuple[int, str, str, bool]],
                                                                   dict[int, str]]:
        """The prompt and the judged reply of each example, the reply written as the final turn."""
        assert self.template is not None
        texts: list[tuple[int, str, str, bool]] = []
        errors: dict[int, str] = {}
        for i, ex in enumerate(examples):
            try:
                prompt, reply = reply_texts(self.template, ex["prompt"], ex["completion"])
            except RecordProblem as exc:
                errors[i] = error_status(exc)
                continue
            texts.append((i, prompt[-self.char_cap:], reply[: self.char_cap], bool(ex["label"])))
        return len(examples), texts, errors

    def _kto(self, prepared: Any) -> dict[str, list[Any]]:
        keys = ("prompt_ids", "completion_ids", "label", "length", "trained", "masked", "status", "prompt_cut",
                "completion_cut")
        out: dict[str, list[Any]] = {k: [] for k in keys}
        n, texts, errors = prepared
        flat = [t for _, p, c, _ in texts for t in (p, c)]
        encs = self.backend.encode_batch(flat, add_special_tokens=False) if flat else []
        encoded = {row[0]: (encs[2 * j].ids, encs[2 * j + 1].ids, row[3]) for j, row in enumerate(texts)}
        for i in range(n):
            if i in errors:
                self._emit_kto(out, [], [], False, 0, errors[i], False, False)
                continue
            prompt, reply, label = encoded[i]
            prompt, (reply,), length, status, prompt_cut, completion_cut = self._cut(prompt, [reply])
            if status == TOO_LONG:
                self._emit_kto(out, [], [], label, length, TOO_LONG, False, False)
            else:
                self._emit_kto(out, prompt, reply, label, length, status, prompt_cut, completion_cut)
        out["row"] = list(range(n))  # one row per judged reply
        return out

    @staticmethod
    def _emit_kto(out: dict[str, list[Any]], prompt: list[int], reply: list[int], label: bool, length: int,
                  status: str, prompt_cut: bool, completion_cut: bool) -> None:
        out["prompt_ids"].append(prompt)
        out["completion_ids"].append(reply)
        out["label"].append(label)
        out["length"].append(length)
        out["trained"].append(len(reply))
        out["masked"].append(len(prompt))
        out["status"].append(status)
        out["prompt_cut"].append(prompt_cut)
        out["completion_cut"].append(completion_cut)

    # ---- GRPO (prompts) ---------------------------------------------------------------
    def _render_prompts(self, examples: list[dict[str, Any]]) -> tuple[int, list[tuple[int, str, str]],
                                                                       dict[int, str]]:
        """Each prompt as the model sees it when it answers (the template's generation prompt), and the
        prompt messages with the reward fields as JSON (nova.data.prompts)."""
        assert self.template is not None
        texts: list[tuple[int, str, str]] = []
        errors: dict[int, str] = {}
        for i, ex in enumerate(examples):
            try:
                text = self.template.render(self.template.template_messages(ex["prompt"]), generation=True)
            except RecordProblem as exc:
                errors[i] = error_status(exc)
                continue
            record = orjson.dumps({"prompt": ex["prompt"], **ex["fields"]}, default=str).decode()
            texts.append((i, text[-self.char_cap:], record))
        return len(examples), texts, errors

    def _prompts(self, prepared: Any) -> dict[str, list[Any]]:
        """prompt_ids (the end kept past max_prompt_length, or dropped under overlong: drop) and record."""
        keys = ("prompt_ids", "record", "length", "trained", "masked", "status", "prompt_cut", "completion_cut")
        out: dict[str, list[Any]] = {k: [] for k in keys}
        n, texts, errors = prepared
        encs = self.backend.encode_batch([t for _, t, _ in texts], add_special_tokens=False) if texts else []
        encoded = {row: (enc.ids, record) for (row, _, record), enc in zip(texts, encs, strict=True)}
        limit = min(self.max_prompt_length, self.max_length)
        for i in range(n):
            ids, record = encoded.get(i, ([], ""))
            cut = len(ids) > limit
            status = errors.get(i) or (TOO_LONG if cut and self.overlong == "drop" else TRUNCATED if cut else OK)
            kept = ids[-limit:] if status in (OK, TRUNCATED) else []
            for key, value in zip(keys, (kept, record if kept else "", len(ids), 0, len(kept), status,
                                         status == TRUNCATED, False), strict=True):
                out[key].append(value)
        out["row"] = list(range(n))  # one row per prompt
        return out

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
