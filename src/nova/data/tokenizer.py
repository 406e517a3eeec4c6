"""Load only the tokenizer of a config's base model, for the token view of ``nova data``.

A data check must not need the model weights, a GPU, or the network: a local directory is
read with ``local_files_only``, a hub id only from the local cache when offline, and a
``.gguf`` base through its imported directory if it has been imported. When none of that
works the caller gets ``(None, reason)`` and gives the record-level report instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nova.errors import NovaError


def _offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE",
                                                                                "TRANSFORMERS_OFFLINE"))


def _gguf_import_dir(base: str, models_dir: str) -> Path:
    # Same rule as nova.model.gguf.default_import_dir (kept here so nova data stays import-light).
    return Path(models_dir).expanduser() / Path(base).stem.lower()


def load_tokenizer(model: Any) -> tuple[Any | None, str | None]:
    """(tokenizer, None) or (None, why not) for a ``ModelConfig``."""
    base = model.base
    source = base
    local = Path(base).expanduser()
    if base.lower().endswith(".gguf"):
        imported = _gguf_import_dir(base, model.models_dir)
        if not (imported / "tokenizer_config.json").exists():
            return None, (f"the base is a .gguf file not imported yet (no {imported}); run 'nova models import-gguf' "
                          "for the token view")
        source, local = str(imported), imported
    from nova.lazy import require

    transformers = require("transformers")
    kwargs: dict[str, Any] = {"trust_remote_code": model.trust_remote_code}
    if local.exists() or _offline():  # a hub id offline: only the local cache can answer
        kwargs["local_files_only"] = True
    if model.revision and not local.exists():
        kwargs["revision"] = model.revision
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(local) if local.exists() else source, **kwargs)
    except Exception as exc:
        where = "offline and not in the local cache" if _offline() and not local.exists() else str(exc)
        return None, f"cannot load the tokenizer of {base}: {where.splitlines()[0] if where else type(exc).__name__}"
    if model.chat_template:
        tokenizer.chat_template = _read_template(model.chat_template)
    return tokenizer, None


def _read_template(path: str) -> str:
    try:
        return Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise NovaError(f"cannot read model.chat_template {path}: {exc.strerror or exc}") from None
