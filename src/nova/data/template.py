"""The model's chat template: compiled once, rendered as apply_chat_template renders it, and
probed once for how it treats reasoning.

Templates differ in ways no name tells reliably: Qwen3 reads a reply's reasoning from
``reasoning_content`` (or a ``<think>`` block in the content), gpt-oss from ``thinking``,
DeepSeek-R1 distills cut it from the content and open a ``<think>`` block in the generation
prompt instead, Llama or Gemma know nothing of it and write the content as it is. nova finds
out by rendering probe chats with sentinel texts and seeing where the sentinels appear (see
``Behaviour``), so a template nova has never seen is handled by what it does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from nova.data.reasoning import FIELD, FIELDS, OPEN, as_inline
from nova.data.records import RecordProblem
from nova.data.template_limits import bounded, explain, guard
from nova.errors import NovaError, TrainingStopped

# Public attributes of a Jinja ``loop`` object: reading them is always safe, so they skip the sandbox's
# per-access checks (the sandbox would allow each of them anyway).
_LOOP_ATTRIBUTES = frozenset({"index", "index0", "revindex", "revindex0", "first", "last", "length", "depth",
                              "depth0", "previtem", "nextitem"})
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")  # transformers' test for {% generation %} support

# How a template is given a reply's reasoning: one of FIELDS (the field it reads), INLINE (a think
# block at the start of the content), or REBUILT (it drops the reasoning of even the final reply, so
# nova writes it in the inline form where the reply starts, after the template's own think opener).
INLINE, REBUILT = "inline", "rebuilt"

_Q, _A, _R, _Q2 = "NOVAPROBEQUESTION", "NOVAPROBEANSWER", "NOVAPROBEREASONING", "NOVAPROBEFOLLOWUP"


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
    guard(env)  # every attribute, item and call checks the render's clock and sizes (nova.data.template_limits)
    return template


@dataclass(frozen=True)
class Behaviour:
    """What probe renders showed about a template."""

    reasoning: str  # a name in FIELDS, INLINE or REBUILT
    # The block the template writes at the start of a final reply that has no reasoning when it
    # would have written the reasoning there (Qwen3: "<think>\n\n</think>\n\n"); '' for none.
    empty_think: str
    marks: bool  # the template marks replies with {% generation %}
    # What ends a final reply when the template writes nothing after it (GLM-4.5: a reply ends only where the
    # next role marker starts): that marker, with the whitespace before it; nova trains it after every reply
    # so the model learns to stop, and generation stops on it. '' when the template ends replies itself.
    stop: str = ""
    stop_problem: str = ""  # why no stop can be learned with this template ('' when one can)


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
        self.specials = special_tokens(tokenizer)
        self._compiled: Any = None
        self._behaviour: Behaviour | None = None
        self._switch: str | None = None
        self._plain = {g: {"add_generation_prompt": g, "tools": None, "documents": None, **self.kwargs}
                       for g in (False, True)}

    def __getstate__(self) -> dict[str, Any]:
        # The compiled Jinja template does not pickle; worker processes compile their own.
        return {**self.__dict__, "_compiled": None}

    def _template(self) -> Any:
        if self._compiled is None:
            self._compiled = _compile(self.source)
        return self._compiled

    def _variables(self, generation: bool, options: dict[str, Any] | None) -> dict[str, Any]:
        """What apply_chat_template hands the template, with the example's ``tools`` and its thinking
        switch under the name the template reads (see ``thinking_switch``). Without options (most
        records) one of two prepared dicts: this runs for every prefix of every chat."""
        if options is None:
            return self._plain[generation]
        extra = options
        out = {"add_generation_prompt": generation, "tools": extra.get("tools"), "documents": None, **self.kwargs}
        if "enable_thinking" in extra:
            if self._switch is None:
                self._switch = thinking_switch(self.source, self._template().environment)
            out[self._switch] = extra["enable_thinking"]
        return out

    def render(self, messages: list[dict[str, Any]], generation: bool = False,
               options: dict[str, Any] | None = None) -> str:
        """The text of ``messages`` (already in the template's form, see ``template_messages``);
        ``options`` are the example's ``enable_thinking`` and ``tools``."""
        compiled = self._compiled or self._template()
        variables = self._plain[generation] if options is None else self._variables(generation, options)
        try:
            return "".join(bounded(compiled.generate(messages=messages, **variables)))
        except TrainingStopped:  # Ctrl-C or SIGTERM arriving while a template renders: the run's stop, not the record's
            raise
        except Exception as exc:  # jinja TemplateError, raise_exception() from the template, TemplateLimit
            raise explain(exc, self.model_name, self.source, messages, variables) from None

    def render_marked(self, messages: list[dict[str, Any]],
                      options: dict[str, Any] | None = None) -> tuple[str, list[tuple[int, int]]]:
        """The text and the character spans the template wraps in {% generation %} ... {% endgeneration %}."""
        template = self._template()
        blocks: list[str] = []
        marked: list[tuple[int, int]] = []
        variables = self._variables(False, options)
        try:
            with template.environment.activate_tracker(blocks, marked):
                for block in bounded(template.generate(messages=messages, **variables)):
                    blocks.append(block)
        except TrainingStopped:
            raise
        except Exception as exc:
            raise explain(exc, self.model_name, self.source, messages, variables) from None
        return "".join(blocks), marked

    @property
    def behaviour(self) -> Behaviour:
        if self._behaviour is None:
            self._behaviour = _probe(self)
        return self._behaviour

    def template_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Messages with each reply's reasoning where this template reads it (nova keeps it in
        ``reasoning_content``); the same list when no message has reasoning."""
        for m in messages:
            if FIELD in m:
                break
        else:
            return messages
        style = self.behaviour.reasoning
        if style == FIELD:
            return messages
        out = []
        for m in messages:
            if FIELD not in m:
                out.append(m)
                continue
            m = dict(m)
            reasoning = m.pop(FIELD)
            if style == INLINE:
                m["content"] = as_inline(reasoning, m["content"])
            elif style != REBUILT:
                m[style] = reasoning
            out.append(m)
        return out


def special_tokens(tokenizer: Any) -> frozenset[str]:
    """Every special token of ``tokenizer`` (eos, bos, pad, ... and added tokens marked special)."""
    found = {str(t) for t in getattr(tokenizer, "all_special_tokens", None) or [] if t}
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    found |= {str(t.content) for t in decoder.values() if getattr(t, "special", False) and t.content}
    return frozenset(found)


def _reply_stop(template: ChatTemplate) -> tuple[str, str]:
    """(what nova appends after a final reply so its end is trained, why no stop can be learned).

    Most templates close a reply themselves (``<|im_end|>``, ``<|eot_id|>``, eos): nothing to add.
    A template that writes nothing after the last reply ends replies only where the next turn
    begins; the special token that begins it (GLM-4.5's ``<|user|>``) is what the model must emit
    to end its turn, so it is trained after every reply and generation stops on it.
    """
    user, reply = {"role": "user", "content": _Q}, {"role": "assistant", "content": _A}
    try:
        plain = template.render([user, reply])
        follow = template.render([user, reply, {"role": "user", "content": _Q2}])
    except RecordProblem:
        return "", ""
    at = plain.rfind(_A)
    if at < 0 or plain[at + len(_A):].strip():
        return "", ""
    at, nxt = follow.find(_A), follow.find(_Q2)
    between = follow[at + len(_A): nxt] if 0 <= at < nxt else ""
    marker = leading_special(between.lstrip(), template.specials)
    if marker:
        return between[: len(between) - len(between.lstrip())] + marker, ""
    shown = repr(between.strip()) if between.strip() else "nothing"
    return "", (f"the chat template of {template.model_name} writes nothing after the last reply and {shown} "
                "between a reply and the next turn, which is not a special token the model could learn to stop on")


def leading_special(text: str, specials: frozenset[str]) -> str:
    """The longest special token ``text`` starts with, or ''."""
    return max((t for t in specials if text.startswith(t)), key=len, default="")


def _probe(template: ChatTemplate) -> Behaviour:
    """Render a one-turn chat with sentinel texts to learn where reasoning goes and what ends a reply."""
    user = {"role": "user", "content": _Q}
    marks = bool(_GENERATION_TAG.search(template.source))
    try:
        prompt = template.render([user], generation=True)
        plain = template.render([user, {"role": "assistant", "content": _A}])
    except RecordProblem:
        # A template that needs more than a plain one-turn chat (a system message, say): records tell
        # their own problems; reasoning goes into the content, where any template writes it.
        return Behaviour(INLINE, "", marks)
    stop, stop_problem = _reply_stop(template)
    style = REBUILT
    shown = ""
    for name in FIELDS:
        text = _try_render(template, [user, {"role": "assistant", "content": _A, name: _R}])
        if _R in text:
            style, shown = name, text
            break
    else:
        text = _try_render(template, [user, {"role": "assistant", "content": as_inline(_R, _A)}])
        if _R in text:
            style, shown = INLINE, text
    return Behaviour(style, _empty_think(prompt, plain, shown), marks, stop, stop_problem)


def _try_render(template: ChatTemplate, messages: list[dict[str, Any]]) -> str:
    try:
        return template.render(messages)
    except RecordProblem:
        return ""


def _empty_think(prompt: str, plain: str, shown: str) -> str:
    """The text a plain final reply gets where reasoning would go, when it is the reasoning wrapper
    with nothing inside (an empty think block); '' when the template writes none."""
    if not (shown and plain.startswith(prompt) and shown.startswith(prompt)):
        return ""
    turn, with_reasoning = plain[len(prompt):], shown[len(prompt):]
    before = turn[: max(turn.find(_A), 0)]
    r = with_reasoning.find(_R)
    a = with_reasoning.find(_A, r + len(_R))
    if not before.strip() or r < 0 or a < 0:
        return ""
    wrapper = with_reasoning[:r] + with_reasoning[r + len(_R): a]
    return before if "".join(before.split()) == "".join(wrapper.split()) else ""


def think_opener(prompt_tail: str) -> str:
    """The think block a generation prompt opens at its end (DeepSeek-R1, QwQ: '<think>\\n'), or ''."""
    at = prompt_tail.rfind(OPEN)
    return prompt_tail[at:] if at >= 0 and not prompt_tail[at + len(OPEN):].strip() else ""


def thinking_switch(source: str, environment: Any = None) -> str:
    """The variable a template reads to turn thinking on or off: ``enable_thinking`` (Qwen3, GLM,
    SmolLM3) or ``thinking`` (DeepSeek-V3.1, Granite), found among the names the template uses
    without defining; ``enable_thinking`` when it reads neither (it then changes nothing).
    ``environment``: the one the template compiles in (it knows {% generation %})."""
    import jinja2
    import jinja2.meta

    try:
        names = jinja2.meta.find_undeclared_variables((environment or jinja2.Environment()).parse(source))
    except jinja2.TemplateError:
        names = set()
    return "thinking" if "thinking" in names and "enable_thinking" not in names else "enable_thinking"


def reply_end_ids(tokenizer: Any) -> list[int]:
    """The token ids that end an assistant turn with this tokenizer's chat template, for generation to stop on:
    the special token the template writes right after a reply (``<|im_end|>``, ``<|eot_id|>``), or, for a
    template that ends replies only where the next turn starts, that turn's marker (``Behaviour.stop``)."""
    if not getattr(tokenizer, "chat_template", None):
        return []
    try:
        template = ChatTemplate(tokenizer, str(getattr(tokenizer, "name_or_path", "") or "tokenizer"))
        text = template.render([{"role": "user", "content": _Q}, {"role": "assistant", "content": _A}])
    except (NovaError, RecordProblem):
        return []
    at = text.rfind(_A)
    tail = text[at + len(_A):].lstrip() if at >= 0 else ""
    marker = leading_special(tail, template.specials) or template.behaviour.stop.strip()
    if not marker:
        return []
    ids = tokenizer.convert_tokens_to_ids([marker])
    return [int(i) for i in ids if i is not None and i != getattr(tokenizer, "unk_token_id", None)]
