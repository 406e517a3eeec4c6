"""Cache tokenized stage data, keyed by everything that could change it.

The key hashes the data files' bytes, the data settings, the method, seed and DPO lengths,
and the tokenizer (its vocabulary and merges, special tokens and chat template). A re-run, or
the next phase on the same data, then loads Arrow files instead of tokenizing again; any
edit to a file or setting gives a new key, so a stale cache is never read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from nova.config.data_schema import DataConfig
from nova.data.sources import FileProblem, list_files, looks_like_hub_id

# 2: prompt/completion trains the completion only; 3: reasoning, per-turn masks; 4: a reply of a template that
# ends replies only at the next turn trains that turn's marker (nova.data.template), a trained user turn its content
# and end, not its role header
PIPELINE_VERSION = "nova-data-4"


def _hash_file(path: Path, h: Any) -> None:
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)


def tokenizer_fingerprint(tokenizer: Any, template: str | None) -> str:
    """What identifies a tokenizer's behaviour (not its name: two paths can hold the same one)."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else type(tokenizer).__name__).encode())
    h.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    h.update(str(tokenizer.eos_token_id).encode())
    h.update((template or "").encode())
    return h.hexdigest()


# Settings that change how the data is processed or stored, never what it holds: left out of the key.
_LAYOUT_ONLY = {"num_proc", "cache_dir", "shard_records", "stream_buffer_mb"}


def cache_key(cfg: DataConfig, *, method: str, seed: int, dpo_lengths: tuple[int, int],
              tokenizer_id: str, fields: tuple[str, ...] = ()) -> str | None:
    """The content key, or None when a source cannot be hashed (a hub id, a missing file). ``fields``
    (GRPO: the record fields its rewards need) decide which records are valid, so they are hashed too."""
    h = hashlib.sha256(PIPELINE_VERSION.encode())
    settings = _stable(cfg.model_dump(mode="json", exclude=_LAYOUT_ONLY))
    keyed = [settings, method, seed, dpo_lengths, tokenizer_id] + ([list(fields)] if fields else [])
    h.update(json.dumps(keyed, sort_keys=True).encode())
    for spec in [*cfg.datasets, *cfg.eval_datasets]:
        if looks_like_hub_id(spec.path):
            return None
        try:
            files = list_files(Path(spec.path).expanduser(), spec.ignore)
        except FileProblem:
            return None
        for file in files:
            h.update(str(file).encode() + b"\0")
            try:
                _hash_file(file, h)
            except OSError:
                return None
    return h.hexdigest()[:32]


# Settings added after runs were made, left out of the key at their defaults so those runs' keys (and
# a resume's data check) stay as they were; set, they are keyed like every other setting.
_NEWER_DEFAULTS = {"skip_warn_share": 0.05, "skip_fail_share": 0.5, "streaming": False}
_NEWER_SOURCE_DEFAULTS: dict[str, object] = {"ignore": [], "roles": {}}


def _stable(settings: dict[str, Any]) -> dict[str, Any]:
    for key, default in _NEWER_DEFAULTS.items():
        if settings.get(key) == default:
            settings.pop(key)
    for side in ("datasets", "eval_datasets"):
        for spec in settings.get(side, []):
            for key, default in _NEWER_SOURCE_DEFAULTS.items():
                if spec.get(key) == default:
                    spec.pop(key)
    return settings


def load(cache_dir: str, key: str) -> tuple[Any, Any, dict[str, Any]] | None:
    """(train, eval or None, report dict) from the cache, or None on a miss. An entry is the shards tokenization
    wrote (nova.data.shards, memory-mapped) or, made by an older nova, a datasets save_to_disk."""
    root = Path(cache_dir) / "data" / key
    if not (root / "report.json").exists():
        return None
    from datasets import load_from_disk

    from nova.data.shards import SHARDS_FILE, open_side

    try:
        report = json.loads((root / "report.json").read_text(encoding="utf-8"))
        if (root / SHARDS_FILE).exists():
            listing = json.loads((root / SHARDS_FILE).read_text(encoding="utf-8"))
            return open_side(root, listing["train"]), open_side(root, listing["eval"]), report
        train = load_from_disk(str(root / "train"))
        evals = load_from_disk(str(root / "eval")) if (root / "eval").exists() else None
    except (OSError, ValueError, IndexError, KeyError):  # IndexError: datasets cannot read back an empty split
        return None  # a half-deleted cache entry is a miss, not an error
    return train, evals, report
