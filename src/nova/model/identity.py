"""What identifies a base model's weights, cheaply: so a resume notices a different base at the same path.

Hashing every byte of an 8B model takes a minute on every ``nova train``. The weight files'
names and sizes, plus a sha256 of the first and last MiB of each (the safetensors header holds
every tensor's name, shape and offset; the first and last MiB hold real weights), tell two
models apart, including two of the same shape: like the GGUF import's provenance.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from nova.files import MiB

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def _head_tail(path: Path, h: Any) -> None:
    size = path.stat().st_size
    h.update(f"{path.name}:{size}".encode())
    with path.open("rb") as fh:
        h.update(fh.read(MiB))
        if size > 2 * MiB:
            fh.seek(size - MiB)
            h.update(fh.read(MiB))


def directory_identity(directory: Path) -> str:
    """A digest of config.json and the weight files of a local model directory."""
    h = hashlib.sha256()
    config = directory / "config.json"
    if config.is_file():
        h.update(config.read_bytes())
    for path in sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES):
        _head_tail(path, h)
    return h.hexdigest()[:24]


def model_identity(base: str, source: str, revision: str | None) -> str:
    """The identity of the weights nova loads for ``base`` (resolved to ``source``).

    A local directory (also an imported GGUF, or a hub snapshot in the cache) by its files; a hub
    id that is not cached by name and revision (transformers resolves it when it loads).
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return directory_identity(path)
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "config.json", revision=revision)
    except Exception:  # an unusual cache layout: fall back to the name
        cached = None
    if isinstance(cached, str):
        return directory_identity(Path(cached).parent)
    return f"hub:{source}@{revision or 'main'}"
