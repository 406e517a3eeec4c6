"""The tokenizer half of a GGUF file: the vocabulary, merges and special ids llama.cpp tokenizes with.

A GGUF model carries its own tokenizer, and llama.cpp re-implements the tokenization from these
fields, so a wrong field does not fail: it silently splits text differently from training. Two
kinds are written, as llama.cpp's converters write them:

- byte-level BPE (``tokenizer.ggml.model = gpt2``: SmolLM2, Qwen2, Llama 3), with the
  pre-tokenizer name llama.cpp needs to split text the same way (read off tokenizer.json);
- SentencePiece-style BPE with byte fallback (``llama``: Mistral, Llama 2), with scores and the
  space-prefix flag.

Plus token types, merges, special ids, ``add_bos_token`` as the tokenizer behaves, and the chat
template. Unigram vocabularies (T5, some Gemma) are refused. The tensors are written by
``nova.export.gguf_export``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from nova.errors import NovaError
from nova.lazy import require

_LLAMA3_REGEX_START = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
_QWEN2_REGEX_START = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}|"


def _pre_tokenizer_parts(pre: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not pre:
        return []
    if pre.get("type") == "Sequence":
        return list(pre.get("pretokenizers") or [])
    return [pre]


def detect_pre_tokenizer(tokenizer_json: dict[str, Any]) -> str | None:
    """llama.cpp's ``tokenizer.ggml.pre`` name for this tokenizer.json, or None when unknown.

    llama.cpp identifies it by hashing a tokenization of a test string against models it knows;
    here the structure of the pre-tokenizer is read instead, which covers the families nova trains
    (and is what transformers' GGUF reader maps the names back to).
    """
    parts = _pre_tokenizer_parts(tokenizer_json.get("pre_tokenizer"))
    types = [p.get("type") for p in parts]
    if types == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if types == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"
    if types and types[0] == "Split":
        pattern = parts[0].get("pattern") or {}
        regex = pattern.get("Regex") or pattern.get("String") or ""
        if regex.startswith(_QWEN2_REGEX_START):
            return "qwen2"
        if regex.startswith(_LLAMA3_REGEX_START):
            return "llama-bpe"
    return None


def _merges(model: dict[str, Any]) -> list[str]:
    """Merges as ``"a b"`` strings (tokenizer.json stores either strings or pairs)."""
    out = []
    for merge in model.get("merges") or []:
        out.append(merge if isinstance(merge, str) else " ".join(merge))
    return out


def adds_bos(tok: Any) -> bool:
    """Whether the tokenizer puts bos in front of plain text (llama.cpp must do the same)."""
    if tok.bos_token_id is None:
        return False
    ids = tok("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tok.bos_token_id


def tokenizer_kind(model: dict[str, Any]) -> str:
    """``gpt2`` (byte-level BPE) or ``llama`` (SentencePiece-style BPE with byte fallback)."""
    if model.get("type") == "BPE":
        return "llama" if model.get("byte_fallback") else "gpt2"
    raise NovaError(f"GGUF export supports BPE tokenizers only (byte-level or SentencePiece BPE); this "
                    f"tokenizer is {model.get('type')}")


def _adds_space_prefix(data: dict[str, Any]) -> bool:
    """Whether a SentencePiece-style tokenizer puts a word boundary mark before the text."""
    normalizer = data.get("normalizer") or {}
    steps = normalizer.get("normalizers", [normalizer]) if normalizer.get("type") == "Sequence" else [normalizer]
    if any(step.get("type") == "Prepend" for step in steps):
        return True
    return any(p.get("type") == "Metaspace" and p.get("prepend_scheme", "always") in ("always", "first")
               and p.get("add_prefix_space", True)
               for p in _pre_tokenizer_parts(data.get("pre_tokenizer")))


_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def vocabulary(tok: Any, vocab_size: int, kind: str) -> tuple[list[str], list[int], list[float]]:
    """(tokens, token types, scores) for ids 0..vocab_size-1, as llama.cpp's converters lay them out.

    Ids the tokenizer does not use (embeddings padded to a multiple) become ``[PADn]``/UNUSED.
    Scores matter for ``llama`` vocabularies only: llama.cpp's SentencePiece tokenizer merges the
    best-scored pair first, and SentencePiece BPE pieces are numbered best-first, so ``-id`` keeps
    the merge order.
    """
    gguf = require("gguf")
    tt = gguf.TokenType
    vocab = tok.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise NovaError(f"tokenizer has ids up to {max(vocab.values())} but the model has {vocab_size} embeddings")
    by_id = {i: t for t, i in vocab.items()}
    added = dict(tok.added_tokens_decoder.items())
    tokens: list[str] = []
    types: list[int] = []
    scores: list[float] = []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(tt.UNUSED)
            scores.append(-1000.0)
            continue
        text = added[i].content if i in added else by_id[i]
        tokens.append(text)
        if kind == "llama" and i == tok.unk_token_id:
            types.append(tt.UNKNOWN)
            scores.append(0.0)
        elif i in added:
            types.append(tt.CONTROL if added[i].special else tt.USER_DEFINED)
            scores.append(0.0 if added[i].special else -1000.0)
        elif kind == "llama" and _BYTE_TOKEN.fullmatch(text):
            types.append(tt.BYTE)
            scores.append(0.0)
        else:
            types.append(tt.NORMAL)
            scores.append(-float(i))
    return tokens, types, scores


def write_tokenizer(writer: Any, tok: Any, vocab_size: int, notes: list[str]) -> None:
    """Vocabulary, merges, special ids and chat template, as llama.cpp's gpt2/llama vocabs expect."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise NovaError("GGUF export needs a fast tokenizer (tokenizer.json)")
    data = json.loads(backend.to_str())
    model = data.get("model") or {}
    kind = tokenizer_kind(model)
    tokens, types, scores = vocabulary(tok, vocab_size, kind)
    writer.add_tokenizer_model(kind)
    if kind == "gpt2":
        pre = detect_pre_tokenizer(data)
        if pre is None:
            notes.append("unknown pre-tokenizer: tokenizer.ggml.pre left out, llama.cpp falls back to its default")
        else:
            writer.add_tokenizer_pre(pre)
    else:
        writer.add_tokenizer_pre("default")
        writer.add_add_space_prefix(_adds_space_prefix(data))
        writer.add_token_scores(scores)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(_merges(model))
    for tid, add in ((tok.bos_token_id, writer.add_bos_token_id), (tok.eos_token_id, writer.add_eos_token_id),
                     (tok.unk_token_id, writer.add_unk_token_id), (tok.pad_token_id, writer.add_pad_token_id)):
        if tid is not None:
            add(int(tid))
    writer.add_add_bos_token(adds_bos(tok))
    writer.add_add_eos_token(False)
    template = tok.chat_template
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()), None)
    if template:
        writer.add_chat_template(template)
    else:
        notes.append("the tokenizer has no chat template; the GGUF has none either")
