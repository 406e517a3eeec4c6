"""What identifies a base model's weights: so a resume notices a different base at the same path.

Every byte of every weight file is hashed (sha256), and each file's hash is cached by its path,
size, modification and change times and inode (``weight-hashes.json`` in nova's user cache
directory), so only the first ``nova train`` of a model pays for reading it: SmolLM2-135M
(538 MB) hashes in 1.3 s on the development CPU, a cached lookup takes milliseconds (docs/resume.md).
Any write to a file changes its change time (which no tool can set back), so an edit anywhere in
a file, even one that keeps its size and modification time, is hashed again.

Runs sealed by an older nova carry a weaker identity (names, sizes and a hash of the first and
last MiB of each file); ``legacy_identity`` still computes it, so such a run resumes while that
weaker identity matches (nova.train.fingerprint) and the next ``--fresh`` start uses the full one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from nova.files import MiB, write_json_atomic

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
FULL_PREFIX = "sha256:"  # an identity over every byte (a legacy one is bare hex)
CACHE_FILE = "weight-hashes.json"
MAX_CACHED = 2000  # files remembered; the oldest entries go first


def cache_home() -> Path:
    """nova's user cache directory (nova.system.user_cache_dir)."""
    from nova.system import user_cache_dir

    return user_cache_dir()


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def hash_file(path: Path) -> str:
    """sha256 of every byte of ``path`` (read in 4 MiB blocks)."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of ``path``, from the cache when its size, times and inode are unchanged since it was hashed."""
    real = path.resolve()
    stamp = _stamp(real.stat())
    cache_file = cache_home() / CACHE_FILE
    cache = _read_cache(cache_file)
    entry = cache.get(str(real))
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
        return str(entry["sha256"])
    digest = hash_file(real)
    if _stamp(real.stat()) == stamp:  # not changed while it was read: worth remembering
        cache.pop(str(real), None)
        cache[str(real)] = {"stamp": stamp, "sha256": digest}
        for old in list(cache)[:-MAX_CACHED]:
            del cache[old]
        with contextlib.suppress(OSError, ValueError):  # a read-only home: only the next run is slower
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(cache_file, cache)
    return digest


def _weight_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def _config_bytes(directory: Path) -> bytes:
    config = directory / "config.json"
    return config.read_bytes() if config.is_file() else b""


def directory_identity(directory: Path) -> str:
    """A digest of config.json and every byte of the weight files of a local model directory."""
    h = hashlib.sha256(_config_bytes(directory))
    for path in _weight_files(directory):
        h.update(f"{path.name}:{path.stat().st_size}:{file_sha256(path)}".encode())
    return FULL_PREFIX + h.hexdigest()[:24]


def legacy_identity(directory: Path) -> str:
    """The identity nova recorded before the full hash: names, sizes, first and last MiB of each file."""
    h = hashlib.sha256(_config_bytes(directory))
    for path in _weight_files(directory):
        size = path.stat().st_size
        h.update(f"{path.name}:{size}".encode())
        with path.open("rb") as fh:
            h.update(fh.read(MiB))
            if size > 2 * MiB:
                fh.seek(size - MiB)
                h.update(fh.read(MiB))
    return h.hexdigest()[:24]


def is_legacy(identity: Any) -> bool:
    """An identity recorded by an older nova (bare hex, not the full hash nor a hub id)."""
    return isinstance(identity, str) and not identity.startswith((FULL_PREFIX, "hub:"))


def local_directory(source: str, revision: str | None) -> Path | None:
    """The directory nova loads ``source`` from: a local path, a hub snapshot in the cache, or None."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "config.json", revision=revision)
    except Exception:  # an unusual cache layout: fall back to the name
        cached = None
    return Path(cached).parent if isinstance(cached, str) else None


def model_identity(base: str, source: str, revision: str | None) -> str:
    """The identity of the weights nova loads for ``base`` (resolved to ``source``).

    A local directory (also an imported GGUF, or a hub snapshot in the cache) by its files' bytes; a
    hub id that is not cached by name and revision (transformers resolves it when it loads).
    """
    directory = local_directory(source, revision)
    return directory_identity(directory) if directory is not None else f"hub:{source}@{revision or 'main'}"
