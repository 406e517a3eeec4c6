"""Import a GGUF file as a plain Hugging Face model directory that nova can train.

transformers can read a GGUF (``from_pretrained(dir, gguf_file=...)``), but the model it returns
carries a GGUF ``quantization_config`` and an ``hf_quantizer``: it refuses to train and to save.
So the import loads it once, moves the dequantized weights into a model built from the same
config without the quantization entry, and saves that with its tokenizer, chat template and
generation config. After that the directory is an ordinary checkpoint: ``from_pretrained(dir)``
works everywhere (training, merge, infer) and no code path needs to know it came from a GGUF.

Dtype: the default is float32 because it is lossless. The dequantized values of Q4_x/Q5_x/Q8_0
blocks are ``scale * q (+ min)`` computed in float32 from float16 scales, and F16 tensors are
float16 values; float32 holds all of these exactly, while bfloat16 would round them a second time
(float16 does too for the Q-block products). The cost is disk and memory: 4 bytes per parameter
(about 540 MB for a 135M model). Pick ``bfloat16`` for big models on GPUs when that matters.

Provenance: ``nova_import.json`` in the output records the source file (name, size, a sha256 of
its first and last MiB plus its size) and the dtype, so :func:`ensure_hf_model` can reuse an import
that is current and redo one whose source changed, without hashing gigabytes on every run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nova import __version__
from nova.errors import NovaError
from nova.files import MiB, atomic_dir, check_output_dir, portable_path
from nova.lazy import require
from nova.model.gguf_check import check_gguf_structure

GGUF_MAGIC = b"GGUF"
PROVENANCE_FILE = "nova_import.json"
PROVENANCE_FORMAT = 1
DTYPES = ("float32", "bfloat16", "float16")

# GGUF architectures that are encoder-decoder or encoder-only: transformers reads them, but nova
# trains causal language models only.
_NOT_CAUSAL = {"t5", "t5encoder", "umt5"}
# Keys of transformers' GGUF mapping table that are not architectures.
_NOT_ARCH = {"general", "tokenizer"}
# GGUF architecture names that transformers files under another name.
_ARCH_ALIASES = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss",
                 "minimax-m2": "minimax_m2"}

# Tokens that end an assistant turn in the common chat formats. When one is in the vocabulary and
# the chat template uses it, generation must stop there too, not only at the GGUF's eos token.
END_OF_TURN_TOKENS = (
    "<|im_end|>",  # ChatML (SmolLM2, Qwen)
    "<|eot_id|>",  # Llama 3
    "<|end|>",  # Phi-3
    "<end_of_turn>",  # Gemma
    "</s>",  # Llama 2 / Mistral
    "<|endoftext|>",
)


# ---------------------------------------------------------------------------------------------
# Validation and provenance (no torch needed)
# ---------------------------------------------------------------------------------------------


def check_gguf_file(path: str | Path) -> Path:
    """Return ``path`` as a Path if it is a GGUF file whose structure fits its size, else raise NovaError.

    Every reader of a GGUF (the import, ``ensure_hf_model``, transformers) comes through here first:
    ``check_gguf_structure`` refuses a header whose counts claim more than the file holds before
    ``gguf.GGUFReader`` allocates by them.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise NovaError(f"GGUF file not found: {path}", hint="check the path")
    if not path.is_file():
        raise NovaError(f"not a file: {path}", hint="pass the .gguf file itself, not a directory")
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise NovaError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if magic != GGUF_MAGIC:
        raise NovaError(f"not a GGUF file: {path} (starts with {magic!r}, expected b'GGUF')",
                        hint="pass a .gguf model file, e.g. one converted by llama.cpp")
    check_gguf_structure(path)
    return path


def fingerprint(path: Path) -> str:
    """sha256 over the file size and its first and last MiB.

    A full hash of a multi-GB file takes many seconds on every ``nova train``; the head holds all
    metadata and the first tensors, the tail the last tensors, and the size catches the rest of the
    plausible edits (a re-quantized file differs in all three).
    """
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as fh:
        digest.update(fh.read(MiB))
        if size > 2 * MiB:
            fh.seek(size - MiB)
            digest.update(fh.read(MiB))
        elif size > MiB:
            digest.update(fh.read())
    return digest.hexdigest()


def provenance_for(path: Path, dtype: str) -> dict[str, Any]:
    """The provenance record for importing ``path`` at ``dtype`` (what makes an import current)."""
    return {
        "format": PROVENANCE_FORMAT,
        "source_name": path.name,
        "source_size": path.stat().st_size,
        "source_sha256_head_tail": fingerprint(path),
        "dtype": dtype,
    }


_IDENTITY_KEYS = ("format", "source_name", "source_size", "source_sha256_head_tail", "dtype")


def read_provenance(model_dir: Path) -> dict[str, Any] | None:
    """The provenance record of a previous import, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads((model_dir / PROVENANCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def import_is_current(model_dir: Path, gguf_path: Path, dtype: str = "float32") -> bool:
    """True when ``model_dir`` holds a complete import of this exact file at this dtype."""
    old = read_provenance(model_dir)
    if old is None or not (model_dir / "config.json").exists():
        return False
    new = provenance_for(gguf_path, dtype)
    return all(old.get(k) == new[k] for k in _IDENTITY_KEYS)


# ---------------------------------------------------------------------------------------------
# The import
# ---------------------------------------------------------------------------------------------


def gguf_architecture(path: Path) -> str:
    """``general.architecture`` of a GGUF file (NovaError when the header is unreadable)."""
    gguf = require("gguf")
    try:
        reader = gguf.GGUFReader(str(path))
        field = reader.fields["general.architecture"]
        return str(field.contents())
    except KeyError as exc:
        raise NovaError(f"{path}: GGUF file has no general.architecture key") from exc
    except Exception as exc:  # a truncated or corrupt file fails in many ways inside the reader
        raise NovaError(f"cannot read GGUF file {path}: {type(exc).__name__}: {exc}",
                        hint="the file may be truncated or corrupt; download it again") from exc


def check_architecture(path: Path) -> str:
    """Return the architecture, or raise NovaError when transformers/nova cannot train it."""
    arch = gguf_architecture(path)
    require("transformers")
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    supported = sorted(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in _NOT_CAUSAL | _NOT_ARCH)
    if _ARCH_ALIASES.get(arch, arch) not in supported:
        raise NovaError(f"{path.name}: unsupported GGUF architecture '{arch}'",
                        hint=f"supported: {', '.join(supported)}")
    return arch


def import_gguf(gguf_path: str | Path, out_dir: str | Path, *, dtype: str = "float32",
                force: bool = False) -> Path:
    """Convert ``gguf_path`` into a Hugging Face model directory at ``out_dir`` and return it.

    The directory holds dequantized safetensors weights, a config.json without GGUF quantization,
    the tokenizer with its chat template, a generation_config.json whose eos includes the
    end-of-turn token, and ``nova_import.json`` (provenance). It is written to a temporary sibling
    and renamed at the end. Raises NovaError for a missing file, a non-GGUF file, an unsupported
    architecture, a non-empty ``out_dir`` without ``force`` (or, with it, one that is not an earlier import),
    or an unknown dtype.
    """
    if dtype not in DTYPES:
        raise NovaError(f"unknown dtype '{dtype}'", hint=f"use one of: {', '.join(DTYPES)}")
    src = check_gguf_file(gguf_path)
    out = Path(out_dir).expanduser()
    check_output_dir(out, force, marker=PROVENANCE_FILE)  # --force replaces an earlier import, nothing else
    arch = check_architecture(src)
    with atomic_dir(out, force, check=False) as tmp:
        _convert(src, tmp, dtype=dtype, arch=arch)
        # the source as a path relative to the import (or its name): no absolute path of this machine
        record = {**provenance_for(src, dtype), "source_path": portable_path(src, out),
                  "architecture": arch, "nova_version": __version__,
                  "transformers_version": require("transformers").__version__,
                  "created_unix": int(time.time())}
        (tmp / PROVENANCE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return out


def _convert(src: Path, tmp: Path, *, dtype: str, arch: str) -> None:
    """Load the GGUF with transformers and save a plain, trainable model into ``tmp``."""
    torch = require("torch")
    transformers = require("transformers")
    torch_dtype = getattr(torch, dtype)
    try:
        with quiet_progress():
            tok = transformers.AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
            loaded, info = transformers.AutoModelForCausalLM.from_pretrained(
                str(src.parent), gguf_file=src.name, dtype=torch_dtype, output_loading_info=True)
    except NovaError:
        raise
    except Exception as exc:
        raise NovaError(f"transformers could not load {src.name} ({arch}): {type(exc).__name__}: {exc}",
                        hint="rerun with --debug for the traceback") from exc
    _check_complete(src, arch, loaded, info)
    _fix_tokenizer(tok, src)
    model = _plain_copy(loaded, torch_dtype)
    del loaded
    _set_special_ids(model, tok)
    with quiet_progress():
        model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))


def _check_complete(src: Path, arch: str, loaded: Any, info: dict[str, Any]) -> None:
    """Every weight the architecture needs came from the file: transformers leaves a missing one at its random
    initial value with only a warning, which would ship a model that looks imported and answers garbage.
    Only a tied output head (the embedding stands for it) may be absent."""
    tied = bool(getattr(loaded.config, "tie_word_embeddings", False))
    missing = sorted(k for k in info.get("missing_keys") or [] if not (tied and k.endswith("lm_head.weight")))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise NovaError(f"{src.name} ({arch}) lacks {len(missing)} tensor(s) the model needs: {shown}",
                        hint="the file is incomplete or was written for another model layout; convert it again "
                             "from the original model, or use another GGUF")


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """Silence transformers' progress bars (they draw with non-ASCII blocks) for one block only.

    The GGUF loader calls ``tqdm`` directly, so its module attribute is swapped for a pass-through;
    the other bars follow transformers' own switch. Both are restored afterwards, so training
    progress elsewhere in the process is untouched.
    """
    from transformers.utils import logging as hf_logging

    gguf_utils = require("transformers.modeling_gguf_pytorch_utils")
    saved_tqdm = getattr(gguf_utils, "tqdm", None)
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    if saved_tqdm is not None:
        gguf_utils.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        if saved_tqdm is not None:
            gguf_utils.tqdm = saved_tqdm
        if was_enabled:
            hf_logging.enable_progress_bar()


def _plain_copy(loaded: Any, torch_dtype: Any) -> Any:
    """A model of the same class and config minus ``quantization_config``, sharing the weights.

    Built on the meta device and filled with ``assign=True``, so no second copy of the weights is
    allocated (a 7B float32 import would otherwise need twice its size in RAM).
    """
    torch = require("torch")
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = ""
    if hasattr(config, "_model_name_or_path"):
        with contextlib.suppress(AttributeError):
            del config._model_name_or_path
    with torch.device("meta"):
        model = type(loaded)._from_config(config, dtype=torch_dtype)
    state = loaded.state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise NovaError(f"GGUF weights do not match the model: missing {missing[:5]}, "
                        f"unexpected {unexpected[:5]}")
    model.tie_weights()
    leftover = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if leftover:
        raise NovaError(f"GGUF import left weights uninitialised: {leftover[:5]}")
    model.eval()
    return model


def _fix_tokenizer(tok: Any, src: Path) -> None:
    """Repairs for what the GGUF tokenizer reader misses, so tokens match llama.cpp and the original.

    - pad: GGUF stores ``tokenizer.ggml.padding_token_id``; if transformers did not set it, reuse
      it, else fall back to eos (what SmolLM2 and most chat models use).
    - ``tokenizer.ggml.pre == "smollm"``: llama.cpp splits digits one by one before the GPT-2
      regex, as SmolLM2's own tokenizer.json does; transformers does not know this pre-tokenizer.
    """
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    pre = _gguf_string(src, "tokenizer.ggml.pre")
    backend = getattr(tok, "backend_tokenizer", None)
    if pre == "smollm" and backend is not None:
        from tokenizers import pre_tokenizers

        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ])


def _gguf_string(src: Path, key: str) -> str | None:
    """A string metadata value of the GGUF file, or None."""
    gguf = require("gguf")
    field = gguf.GGUFReader(str(src)).fields.get(key)
    if field is None:
        return None
    try:
        return str(field.contents())
    except Exception:
        return None


def end_of_turn_ids(tok: Any) -> list[int]:
    """eos first, then the end-of-turn tokens that the chat template actually uses."""
    ids: list[int] = []
    if tok.eos_token_id is not None:
        ids.append(int(tok.eos_token_id))
    template = tok.chat_template if isinstance(tok.chat_template, str) else ""
    vocab = tok.get_vocab()
    for token in END_OF_TURN_TOKENS:
        if token in template and token in vocab and vocab[token] not in ids:
            ids.append(int(vocab[token]))
    return ids


def _set_special_ids(model: Any, tok: Any) -> None:
    """Make config.json and generation_config.json agree with the tokenizer on bos/eos/pad.

    config.json keeps a single eos (some code compares it to one id); generation_config.json gets
    every id generation must stop at.
    """
    transformers = require("transformers")
    eos_ids = end_of_turn_ids(tok)
    model.config.bos_token_id = tok.bos_token_id
    model.config.eos_token_id = eos_ids[0] if eos_ids else None
    model.config.pad_token_id = tok.pad_token_id
    eos: int | list[int] | None = eos_ids[0] if len(eos_ids) == 1 else (eos_ids or None)
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=eos, pad_token_id=tok.pad_token_id)


# ---------------------------------------------------------------------------------------------
# Used by training: a .gguf base is imported once
# ---------------------------------------------------------------------------------------------


def default_import_dir(gguf_path: str | Path, models_dir: str | Path) -> Path:
    """Where a GGUF base is imported to: ``models_dir/<file stem, lowercased>``."""
    return Path(models_dir).expanduser() / Path(gguf_path).stem.lower()


def ensure_hf_model(base: str, models_dir: str | Path, *, dtype: str = "float32") -> str:
    """Return a directory transformers can load for ``base``.

    A ``.gguf`` base is imported into ``models_dir/<stem-lowercased>`` the first time and reused
    while its provenance matches the file; anything else (hub id, model dir) is returned as is.
    A directory at that place that nova did not import is never overwritten.
    """
    if not base.lower().endswith(".gguf"):
        return base
    src = check_gguf_file(base)
    dest = default_import_dir(src, models_dir)
    if import_is_current(dest, src, dtype):
        return str(dest)
    has_content = dest.is_dir() and any(dest.iterdir())
    if has_content and read_provenance(dest) is None:
        raise NovaError(f"{dest} exists and is not a nova GGUF import, refusing to overwrite it",
                        hint="move it away or set model.models_dir to another directory")
    import_gguf(src, dest, dtype=dtype, force=True)
    return str(dest)
