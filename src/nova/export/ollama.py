"""Export a merged model as a directory that ``ollama create NAME -f Modelfile`` can build.

The directory holds the merged safetensors, config and tokenizer files (or, with an ``outtype``,
a GGUF file written by nova) and a Modelfile: ``FROM``, a ``TEMPLATE`` in Ollama's Go template
syntax, ``PARAMETER stop`` lines for the end-of-turn tokens and sampling parameters.

The TEMPLATE is not picked from a list of known formats. It is derived from the model's own Jinja
chat template by rendering probe conversations with sentinel contents and reading off what the
template writes around each role (the default system block, per-role prefix and suffix, the
generation prompt). That covers formats that wrap each message independently (ChatML for SmolLM2
and Qwen2, Llama 3, Phi-3, Zephyr), templates without a system role (Mistral v0.1, Gemma: system
messages are dropped), and Mistral v0.3's system prompt folded into the last user message. The
derived Go template is then rendered by ``nova.export.gotemplate`` on sample conversations and
compared with the Jinja output; anything it cannot express fails with a clear error instead of a
subtly wrong prompt.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nova import __version__
from nova.errors import NovaError
from nova.export.gguf_export import ExportResult, check_merged_dir, export_gguf
from nova.export.gguf_vocab import adds_bos
from nova.export.gotemplate import quote_literal
from nova.export.gotemplate import render as render_go
from nova.files import atomic_dir, check_output_dir, dir_size, portable_path
from nova.lazy import require

# Provenance of an export: what it was made from; ``--force`` replaces only a directory holding it.
EXPORT_INFO = "nova_export.json"

# Files Ollama reads when it imports a safetensors directory (those that exist are copied).
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt",
               "chat_template.jinja", "added_tokens.json")

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

    @property
    def has_system(self) -> bool:
        return self.system_first is not None or self.system_fold is not None


def _render_jinja(tok: Any, messages: list[dict[str, str]], generation: bool) -> str:
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
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
    a1 = {"role": "assistant", "content": _A1}
    u2 = {"role": "user", "content": _U2}
    try:
        probe = _Probe(tok)
        only_user = probe.history([u1])
        generation = _suffix_after(_render_jinja(tok, [u1], True), only_user, "generation prompt")
        with_answer = probe.history([u1, a1])
        assistant = _split(_suffix_after(with_answer, only_user, "assistant"), _A1, "assistant")
        second_turn = probe.history([u1, a1, u2])
        user = _split(_suffix_after(second_turn, with_answer, "user"), _U2, "user")
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
    try:
        with_system = probe.history([{"role": "system", "content": _SYS}, u1])
    except Exception:  # "System role not supported": Ollama's system messages are left out
        return ChatFormat(default_prefix, None, None, user, assistant, generation)
    if not with_system.endswith(user_block):
        fold = _folded_system(with_system, default_prefix, user)
        if fold is None:
            raise NovaError("cannot derive an Ollama template: the system prompt is merged into the user "
                            "message in a way the generated template cannot express")
        return ChatFormat(default_prefix, None, None, user, assistant, generation, system_fold=fold)
    system_first = _split(with_system[: len(with_system) - len(user_block)], _SYS, "system")
    return ChatFormat(default_prefix, system_first, _later_system(probe, with_answer, user_block, system_first),
                      user, assistant, generation)


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
               f"{q(fmt.generation_prompt)}"
    default = f"{{{{ if eq $i 0 }}}}{q(fmt.default_prefix)}{{{{ end }}}}" if fmt.default_prefix else ""
    return (
        "{{ range $i, $_ := .Messages }}"
        f"{{{{ if and (eq $i 0) (eq .Role \"system\") }}}}{wrap(fmt.system_first)}"
        f"{{{{ else }}}}{default}"
        f"{{{{ if eq .Role \"system\" }}}}{wrap(fmt.system_later)}"
        f"{{{{ else if eq .Role \"user\" }}}}{wrap(fmt.user)}"
        f"{{{{ else if eq .Role \"assistant\" }}}}{wrap(fmt.assistant)}"
        "{{ end }}{{ end }}{{ end }}"
        f"{q(fmt.generation_prompt)}"
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


def check_template(tok: Any, template: str, *, system: bool = True, implicit_bos: str = "") -> None:
    """Render the samples with Jinja and with the Go template; NovaError on the first difference.

    With ``system=False`` (a template without a system role) samples with system messages are
    skipped: Jinja refuses them, and the Go template drops them. ``implicit_bos`` is cut from the
    front of the Jinja output (the runtime adds it as a token).
    """
    for messages in SAMPLE_CONVERSATIONS:
        if not system and any(m["role"] == "system" for m in messages):
            continue
        expected = _render_jinja(tok, messages, True)
        if implicit_bos and expected.startswith(implicit_bos):
            expected = expected[len(implicit_bos):]
        got = render_go(template, go_messages(messages))
        if got != expected:
            raise NovaError("the derived Ollama TEMPLATE does not reproduce the chat template "
                            f"(first difference at character {_first_difference(got, expected)})",
                            hint="this chat format is not supported for Ollama export yet")


def _first_difference(a: str, b: str) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


def stop_tokens(tok: Any, fmt: ChatFormat) -> list[str]:
    """eos plus the end-of-turn tokens the format writes (what Ollama must stop generating at)."""
    from nova.model.gguf import END_OF_TURN_TOKENS

    written = "".join([*fmt.assistant, *fmt.user, fmt.generation_prompt])
    stops: list[str] = []
    if tok.eos_token:
        stops.append(tok.eos_token)
    for token in END_OF_TURN_TOKENS:
        if token in written and token not in stops:
            stops.append(token)
    return stops


def sampling_parameters(model_dir: Path) -> dict[str, float | int]:
    """Sampling defaults: the model's generation_config.json where it sets them, else mild defaults."""
    params: dict[str, float | int] = {"temperature": 0.7, "top_p": 0.9}
    try:
        gen = json.loads((model_dir / "generation_config.json").read_text())
    except (OSError, ValueError):
        gen = {}
    for src, dest in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"),
                      ("repetition_penalty", "repeat_penalty")):
        value = gen.get(src)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            params[dest] = value
    return params


def modelfile_text(model_dir: Path, tok: Any, config: Any, source: str = ".") -> str:
    """The Modelfile for ``model_dir`` (NovaError when its chat template cannot be expressed)."""
    fmt = derive_chat_format(tok)
    template = go_template(fmt)
    check_template(tok, template, system=fmt.has_system, implicit_bos=fmt.implicit_bos)
    if '"""' in template:
        raise NovaError('the chat template contains """, which a Modelfile TEMPLATE cannot hold')
    lines = [
        f"# Generated by nova {__version__} from {model_dir.resolve().name}.",
        "# Build it with: ollama create NAME -f Modelfile",
    ]
    if not fmt.has_system:
        lines.append("# The chat template has no system role: system messages (and SYSTEM) are ignored.")
    lines += [
        f"FROM {source}",
        f'TEMPLATE """{template}"""',
    ]
    lines += [f"PARAMETER stop {_modelfile_string(s)}" for s in stop_tokens(tok, fmt)]
    for key, value in sampling_parameters(model_dir).items():
        lines.append(f"PARAMETER {key} {value}")
    ctx = int(getattr(config, "max_position_embeddings", 4096) or 4096)
    lines.append(f"PARAMETER num_ctx {min(ctx, 8192)}")
    return "\n".join(lines) + "\n"


def _modelfile_string(text: str) -> str:
    """A quoted Modelfile argument; the token text is kept as is (Ollama matches it literally)."""
    if '"' in text or "\\" in text or "\n" in text:
        return json.dumps(text, ensure_ascii=False)
    return f'"{text}"'


def export_ollama(model_dir: str | Path, out_dir: str | Path, *, outtype: str | None = None,
                  force: bool = False) -> ExportResult:
    """Write an Ollama model directory: model files (or a GGUF) plus a Modelfile.

    Without ``outtype`` the merged safetensors and tokenizer files are copied and the Modelfile
    says ``FROM .`` (Ollama converts them itself); with ``outtype`` (f16, q8_0, f32) nova writes
    ``model-<outtype>.gguf`` instead and the Modelfile points at it. Copies, not hard links: a later
    ``nova merge --force`` rewrites its files in place and must not change an export.
    """
    src = Path(model_dir).expanduser()
    out = Path(out_dir).expanduser()
    check_output_dir(out, force, marker=EXPORT_INFO)
    transformers = require("transformers")
    check_merged_dir(src)
    tok = transformers.AutoTokenizer.from_pretrained(str(src))
    config = transformers.AutoConfig.from_pretrained(str(src))
    if getattr(config, "quantization_config", None) is not None:
        raise NovaError(f"{src} is a quantized checkpoint; export a merged full-precision model",
                        hint="merge the adapter into an unquantized base first")
    gguf_name = f"model-{outtype}.gguf" if outtype else None
    text = modelfile_text(src, tok, config, source=f"./{gguf_name}" if gguf_name else ".")
    notes: list[str] = []
    with atomic_dir(out, force, check=False) as tmp:
        if gguf_name:
            notes += export_gguf(src, tmp / gguf_name, outtype=outtype or "f16").notes
        else:
            _copy_model_files(src, tmp)
        (tmp / "Modelfile").write_text(text)
        info = {"format": 1, "kind": "ollama", "source": portable_path(src, out), "weights": gguf_name or "safetensors",
                "nova_version": __version__}
        (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return ExportResult(path=out, size_bytes=dir_size(out), notes=notes)


def _copy_model_files(src: Path, dest: Path) -> None:
    copied = 0
    for path in sorted(src.iterdir()):
        if path.name in MODEL_FILES or path.name.endswith((".safetensors", ".safetensors.index.json")):
            shutil.copy2(path, dest / path.name)
            copied += path.name.endswith(".safetensors")
    if not copied:
        raise NovaError(f"no .safetensors weights in {src}", hint="export a merged model saved with safetensors")
