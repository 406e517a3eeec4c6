"""The chat format of a Jinja chat template, learned from probe renders, as an Ollama Go TEMPLATE.

Ollama renders prompts with Go templates, not Jinja. The TEMPLATE is not picked from a list of
known formats: it is derived by rendering probe conversations with sentinel contents and reading
off what the template writes around each role (the default system block, per-role prefix and
suffix, the generation prompt, and the empty think block ``enable_thinking: false`` adds). The
derived Go template is then rendered by ``nova.export.gotemplate`` on sample conversations and
compared with the Jinja output; anything it cannot express fails with a clear error instead of a
subtly wrong prompt, and what a Go template cannot do at all is said in ``ChatFormat.notes``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from nova.errors import NovaError
from nova.export.gguf_vocab import adds_bos
from nova.export.gotemplate import quote_literal
from nova.export.gotemplate import render as render_go

_SYS, _U1, _A1, _U2, _S2 = "NOVAPROBESYS0", "NOVAPROBEUSR1", "NOVAPROBEAST1", "NOVAPROBEUSR2", "NOVAPROBESYS2"

# Conversations the derived template must render exactly like the Jinja template.
SAMPLE_CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "Name one prime number."}],
    [{"role": "user", "content": "Hi there!"},
     {"role": "assistant", "content": "Hello. How can I help?"},
     {"role": "user", "content": "Explain gradient descent\nin one line."}],
    [{"role": "system", "content": "Answer in Romanian."},
     {"role": "user", "content": "Ce este o doica?"},
     {"role": "assistant", "content": "O femeie care ingrijeste copilul altcuiva."},
     {"role": "user", "content": "Multumesc!"}],
    [{"role": "user", "content": "1 + 1?"}, {"role": "assistant", "content": "2"},
     {"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "Code: {{ x }} and {% y %}"}],
]


@dataclass(frozen=True)
class ChatFormat:
    """What a chat template writes around messages, learned from probe renders."""

    default_prefix: str  # before the first message when it is not a system message
    # Around a system message at position 0 (includes any bos) and later in the conversation;
    # None when the chat template rejects the system role (Mistral v0.1, Gemma) or folds it.
    system_first: tuple[str, str] | None
    system_later: tuple[str, str] | None
    user: tuple[str, str]
    assistant: tuple[str, str]
    generation_prompt: str
    # Mistral v0.3 style: the system prompt is written inside the last user message, as
    # fold[0] + system + fold[1] + content + user[1]; None for other formats.
    system_fold: tuple[str, str] | None = None
    # The bos text cut from the front of the template because the tokenizer adds bos itself;
    # Ollama adds it too (add_bos_token), so keeping it would double it.
    implicit_bos: str = ""
    # The generation prompt with thinking switched on / off through the template's switch (Qwen3's
    # enable_thinking=false adds an empty think block; DeepSeek-V3.1's thinking=true opens one);
    # None where it is the default one. Ollama's think (true/false) picks them ($.IsThinkSet, $.Think).
    think_on: str | None = None
    think_off: str | None = None
    switch: str = "enable_thinking"  # the template's name for the switch
    # What the Jinja template does that a Go template cannot (written into the Modelfile).
    notes: tuple[str, ...] = ()

    @property
    def has_system(self) -> bool:
        return self.system_first is not None or self.system_fold is not None


def _render_jinja(tok: Any, messages: list[dict[str, str]], generation: bool, **kwargs: Any) -> str:
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation, **kwargs)
    if not isinstance(text, str):
        raise NovaError("the chat template did not render to text")
    return text


def _closing_token(tok: Any, history: str, prompt: str) -> str:
    """The token some templates append when there is no generation prompt (Phi-3 writes eos).

    Ollama always renders with a generation prompt, so this ending never reaches the model; it is
    cut off the probe renders before they are compared.
    """
    from nova.model.gguf import END_OF_TURN_TOKENS

    for token in (tok.eos_token, *END_OF_TURN_TOKENS):
        if token and history.endswith(token) and not prompt.startswith(history):
            return token
    return ""


class _Probe:
    """Renders probe conversations without the closing token, so blocks append cleanly."""

    def __init__(self, tok: Any) -> None:
        self.tok = tok
        u1 = [{"role": "user", "content": _U1}]
        self.closing = _closing_token(tok, _render_jinja(tok, u1, False), _render_jinja(tok, u1, True))

    def history(self, messages: list[dict[str, str]]) -> str:
        text = _render_jinja(self.tok, messages, False)
        if self.closing:
            if not text.endswith(self.closing):
                raise NovaError("cannot derive an Ollama template: the chat template ends conversations "
                                "inconsistently")
            text = text[: len(text) - len(self.closing)]
        return text


def _split(block: str, sentinel: str, what: str) -> tuple[str, str]:
    if block.count(sentinel) != 1:
        raise NovaError(f"cannot derive an Ollama template: the chat template does not write the {what} "
                        "message once, as is")
    before, after = block.split(sentinel)
    return before, after


def _suffix_after(longer: str, shorter: str, what: str) -> str:
    if not longer.startswith(shorter):
        raise NovaError(f"cannot derive an Ollama template: adding the {what} message rewrites the earlier "
                        "prompt (the format is not one message after another)")
    return longer[len(shorter):]


def derive_chat_format(tok: Any) -> ChatFormat:
    """Learn the per-role wrappers of ``tok``'s chat template (NovaError when it has none or is odd).

    A leading bos token is cut when the tokenizer adds bos on its own (Llama 3, Mistral): HF
    renders it and tokenizes without special tokens, Ollama tokenizes with them.
    """
    fmt = _derive(tok)
    bos = tok.bos_token or ""
    if not bos or not adds_bos(tok):
        return fmt
    first = fmt.system_first
    starts = [fmt.default_prefix] + ([first[0]] if first else [])
    if not all(text.startswith(bos) for text in starts):
        return fmt
    return dataclasses.replace(
        fmt, default_prefix=fmt.default_prefix[len(bos):],
        system_first=(first[0][len(bos):], first[1]) if first else None, implicit_bos=bos)


def _derive(tok: Any) -> ChatFormat:
    if not getattr(tok, "chat_template", None):
        raise NovaError("the model has no chat template, so there is no TEMPLATE to write for Ollama",
                        hint="train with a chat template or add one to tokenizer_config.json")
    u1 = {"role": "user", "content": _U1}
    try:
        probe = _Probe(tok)
        only_user = probe.history([u1])
        generation = _suffix_after(_render_jinja(tok, [u1], True), only_user, "generation prompt")
        assistant, user, with_answer = _turn_wrappers(probe, only_user)
        user_block = user[0] + _U1 + user[1]
        if not only_user.endswith(user_block):
            raise NovaError("cannot derive an Ollama template: the first user message is written differently "
                            "from later ones")
        default_prefix = only_user[: len(only_user) - len(user_block)]
    except NovaError:
        raise
    except Exception as exc:  # the template raised on a plain user/assistant conversation
        raise NovaError(f"cannot derive an Ollama template: the chat template fails on a probe "
                        f"conversation: {type(exc).__name__}: {exc}") from exc
    extra = _thinking(tok, only_user, generation)
    try:
        with_system = probe.history([{"role": "system", "content": _SYS}, u1])
    except Exception:  # "System role not supported": Ollama's system messages are left out
        return ChatFormat(default_prefix, None, None, user, assistant, generation, **extra)
    if not with_system.endswith(user_block):
        fold = _folded_system(with_system, default_prefix, user)
        if fold is None:
            raise NovaError("cannot derive an Ollama template: the system prompt is merged into the user "
                            "message in a way the generated template cannot express")
        return ChatFormat(default_prefix, None, None, user, assistant, generation, system_fold=fold, **extra)
    system_first = _split(with_system[: len(with_system) - len(user_block)], _SYS, "system")
    return ChatFormat(default_prefix, system_first, _later_system(probe, with_answer, user_block, system_first),
                      user, assistant, generation, **extra)


def _turn_wrappers(probe: _Probe, only_user: str) -> tuple[tuple[str, str], tuple[str, str], str]:
    """(assistant wrapper, user wrapper, the probe chat up to the end of its first reply).

    A template that writes a final reply differently from an earlier one (Qwen3 opens an empty
    think block in it, gpt-oss ends it with another token) is read where replies are earlier ones:
    Ollama's prompts end with a user turn, so every reply in them is."""
    u1, a1, u2 = ({"role": "user", "content": _U1}, {"role": "assistant", "content": _A1},
                  {"role": "user", "content": _U2})
    with_answer = probe.history([u1, a1])
    second_turn = probe.history([u1, a1, u2])
    if second_turn.startswith(with_answer):
        assistant = _split(_suffix_after(with_answer, only_user, "assistant"), _A1, "assistant")
        return assistant, _split(second_turn[len(with_answer):], _U2, "user"), with_answer
    before, rest = _split(_suffix_after(second_turn, only_user, "assistant"), _A1, "assistant")
    user_end = only_user[only_user.rindex(_U1) + len(_U1):]
    if rest.count(_U2) != 1 or not rest.endswith(_U2 + user_end):
        raise NovaError("cannot derive an Ollama template: the second user message is written differently "
                        "from the first")
    middle = rest[: rest.rindex(_U2)]  # the end of the reply, then the start of the next user turn
    user_start = _common_suffix(middle, only_user[: only_user.rindex(_U1)])
    assistant = (before, middle[: len(middle) - len(user_start)])
    return assistant, (user_start, user_end), only_user + before + _A1 + assistant[1]


def _common_suffix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[len(a) - 1 - n] == b[len(b) - 1 - n]:
        n += 1
    return a[len(a) - n:]


def _thinking(tok: Any, only_user: str, generation: str) -> dict[str, Any]:
    """The generation prompts of the template's thinking modes, and what cannot be expressed."""
    from nova.data.template import thinking_switch

    switch = thinking_switch(tok.chat_template)
    notes = list(_notes(tok))
    prompts: dict[str, str | None] = {}
    u1 = [{"role": "user", "content": _U1}]
    for mode, value in (("think_on", True), ("think_off", False)):
        try:
            history = _render_jinja(tok, u1, False, **{switch: value})
            prompt = _render_jinja(tok, u1, True, **{switch: value})
        except Exception:
            prompts[mode] = None
            continue
        if history != _render_jinja(tok, u1, False):
            notes.append(f"think: {str(value).lower()} changes more than the generation prompt ({switch}={value}); "
                         "this TEMPLATE writes the default mode for it.")
            prompts[mode] = None
        else:
            changed = prompt[len(history):] if prompt.startswith(history) else generation
            prompts[mode] = changed if changed != generation else None
    return {"think_on": prompts["think_on"], "think_off": prompts["think_off"], "switch": switch,
            "notes": tuple(notes)}


def _generation(fmt: ChatFormat) -> str:
    """The generation prompt, per Ollama's think setting where the template has thinking modes."""
    q = quote_literal
    if fmt.think_on is None and fmt.think_off is None:
        return q(fmt.generation_prompt)
    out = ""
    if fmt.think_on is not None:
        out += f"{{{{ if and $.IsThinkSet $.Think }}}}{q(fmt.think_on)}"
    if fmt.think_off is not None:
        out += "{{ else if and $.IsThinkSet (not $.Think) }}" if out else \
            "{{ if and $.IsThinkSet (not $.Think) }}"
        out += q(fmt.think_off)
    return f"{out}{{{{ else }}}}{q(fmt.generation_prompt)}{{{{ end }}}}"


def _notes(tok: Any) -> tuple[str, ...]:
    """What the Jinja template does that the derived Go template does not (said in the Modelfile)."""
    notes = []
    u1, u2 = {"role": "user", "content": _U1}, {"role": "user", "content": _U2}
    reply = {"role": "assistant", "content": f"<think>\n{_S2}\n</think>\n\n{_A1}"}
    try:
        cut = _S2 not in _render_jinja(tok, [u1, reply, u2], True)
    except Exception:
        cut = False
    if cut:
        notes.append("The chat template cuts <think> blocks out of earlier replies; a Go template cannot cut "
                     "text, so send earlier replies without their reasoning.")
    if "tool" in (tok.chat_template or ""):
        notes.append("Tool definitions, tool calls and tool results are not in this TEMPLATE (it writes "
                     "system, user and assistant turns).")
    return tuple(notes)


def _folded_system(with_system: str, default_prefix: str, user: tuple[str, str]) -> tuple[str, str] | None:
    """(before, between) when the template writes ``prefix + before + SYSTEM + between + USER + post``."""
    tail = _U1 + user[1]
    if not (with_system.startswith(default_prefix) and with_system.endswith(tail)):
        return None
    middle = with_system[len(default_prefix): len(with_system) - len(tail)]
    if middle.count(_SYS) != 1:
        return None
    before, between = middle.split(_SYS)
    return before, between


def _later_system(probe: _Probe, with_answer: str, user_block: str,
                  fallback: tuple[str, str]) -> tuple[str, str]:
    """The wrapper of a system message after the first turn, or the first one if the template refuses."""
    u1 = {"role": "user", "content": _U1}
    a1 = {"role": "assistant", "content": _A1}
    u2 = {"role": "user", "content": _U2}
    try:
        text = probe.history([u1, a1, {"role": "system", "content": _S2}, u2])
    except Exception:
        return fallback
    second_user = user_block.replace(_U1, _U2)
    if not text.startswith(with_answer) or not text.endswith(second_user):
        return fallback
    middle = text[len(with_answer): len(text) - len(second_user)]
    if middle.count(_S2) != 1:
        return fallback
    before, after = middle.split(_S2)
    return before, after


def go_template(fmt: ChatFormat) -> str:
    """The Ollama TEMPLATE for ``fmt`` (Go text/template over ``.Messages``)."""
    q = quote_literal

    def wrap(pair: tuple[str, str]) -> str:
        return f"{q(pair[0])}{{{{ .Content }}}}{q(pair[1])}"

    user = wrap(fmt.user)
    # Ollama's think: false (IsThinkSet, not Think) is the template's enable_thinking=False.
    no_think = _generation(fmt)
    if fmt.system_fold is not None:
        # $.System is every system message joined (Ollama's collate); it goes into the last message.
        folded = f"{q(fmt.system_fold[0])}{{{{ $.System }}}}{q(fmt.system_fold[1])}{{{{ .Content }}}}{q(fmt.user[1])}"
        user = (f"{{{{ if and $.System (eq (len (slice $.Messages $i)) 1) }}}}{folded}"
                f"{{{{ else }}}}{user}{{{{ end }}}}")
    turns = (f"{{{{ if eq .Role \"user\" }}}}{user}"
             f"{{{{ else if eq .Role \"assistant\" }}}}{wrap(fmt.assistant)}{{{{ end }}}}")
    if fmt.system_first is None or fmt.system_later is None:
        # No system role, or a folded one: the prefix comes first and system messages are not turns.
        return f"{q(fmt.default_prefix)}{{{{ range $i, $_ := .Messages }}}}{turns}{{{{ end }}}}" \
               f"{no_think}"
    default = f"{{{{ if eq $i 0 }}}}{q(fmt.default_prefix)}{{{{ end }}}}" if fmt.default_prefix else ""
    return (
        "{{ range $i, $_ := .Messages }}"
        f"{{{{ if and (eq $i 0) (eq .Role \"system\") }}}}{wrap(fmt.system_first)}"
        f"{{{{ else }}}}{default}"
        f"{{{{ if eq .Role \"system\" }}}}{wrap(fmt.system_later)}"
        f"{{{{ else if eq .Role \"user\" }}}}{wrap(fmt.user)}"
        f"{{{{ else if eq .Role \"assistant\" }}}}{wrap(fmt.assistant)}"
        "{{ end }}{{ end }}{{ end }}"
        f"{no_think}"
    )


def go_messages(messages: list[dict[str, str]]) -> dict[str, Any]:
    """The values Ollama passes to a chat template, as its ``collate`` builds them.

    ``.Messages`` keeps every message (system included) with consecutive messages of one role
    merged with a blank line; ``.System`` is all system contents joined the same way.
    """
    collated: list[dict[str, str]] = []
    for m in messages:
        if collated and collated[-1]["Role"] == m["role"]:
            collated[-1]["Content"] += "\n\n" + m["content"]
        else:
            collated.append({"Role": m["role"], "Content": m["content"]})
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    return {"Messages": collated, "System": system}


def check_template(tok: Any, template: str, *, system: bool = True, implicit_bos: str = "",
                   fmt: ChatFormat | None = None) -> None:
    """Render the samples with Jinja and with the Go template; NovaError on the first difference.

    With ``system=False`` (a template without a system role) samples with system messages are
    skipped: Jinja refuses them, and the Go template drops them. ``implicit_bos`` is cut from the
    front of the Jinja output (the runtime adds it as a token). With ``fmt`` each thinking mode it
    expresses is compared too (the template's switch against Ollama's think: true / false).
    """
    variants: list[tuple[dict[str, Any], dict[str, Any]]] = [({}, {"IsThinkSet": False, "Think": False})]
    if fmt is not None and fmt.think_on is not None:
        variants.append(({fmt.switch: True}, {"IsThinkSet": True, "Think": True}))
    if fmt is not None and fmt.think_off is not None:
        variants.append(({fmt.switch: False}, {"IsThinkSet": True, "Think": False}))
    for messages in SAMPLE_CONVERSATIONS:
        if not system and any(m["role"] == "system" for m in messages):
            continue
        for jinja_kwargs, go_values in variants:
            expected = _render_jinja(tok, messages, True, **jinja_kwargs)
            if implicit_bos and expected.startswith(implicit_bos):
                expected = expected[len(implicit_bos):]
            got = render_go(template, {**go_messages(messages), **go_values})
            if got != expected:
                raise NovaError("the derived Ollama TEMPLATE does not reproduce the chat template "
                                f"(first difference at character {_first_difference(got, expected)})",
                                hint="this chat format is not supported for Ollama export yet")


def _first_difference(a: str, b: str) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))
