"""Where the base model is and what its config.json says, without loading weights or going online.

A directory holding only config.json is a valid model for preflight. A hub id is looked up in
the local Hugging Face cache; the network is only asked (with a 3-second timeout) when
HF_HUB_OFFLINE is unset, so preflight never hangs on a dead connection.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from nova.files import did_you_mean, looks_like_local_path

Kind = Literal["local", "gguf", "hub_cached", "hub_remote", "missing"]
NETWORK_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class ModelSource:
    """What preflight found for ``model.base``."""

    kind: Kind
    base: str
    path: Path | None  # a directory with config.json (local dir, imported gguf, or cache snapshot)
    config: dict[str, Any] | None
    message: str


def hub_cache_dir() -> Path:
    """The hub cache, honouring HF_HUB_CACHE and HF_HOME like huggingface_hub does."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = Path(os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface")
    return home.expanduser() / "hub"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def cached_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The cached snapshot directory of a hub model that has a config.json, if any."""
    root = hub_cache_dir() / f"models--{repo_id.replace('/', '--')}"
    snapshots = root / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = root / "refs" / (revision or "main")
    if ref.is_file():
        candidate = snapshots / ref.read_text(encoding="utf-8").strip()
        if (candidate / "config.json").is_file():
            return candidate
    if revision and (snapshots / revision / "config.json").is_file():
        return snapshots / revision
    found = sorted((p for p in snapshots.iterdir() if (p / "config.json").is_file()),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    return found[0] if found else None


def _read_config(directory: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _looks_like_path(base: str) -> bool:
    return looks_like_local_path(base) or base.endswith(".gguf") or base.count("/") > 1


def _hub_reachable(repo_id: str) -> str:
    """One HEAD request, given up after 3 s in all (a thread, since DNS lookups ignore socket timeouts)."""
    import threading

    answer: list[str] = []

    def ask() -> None:
        url = f"https://huggingface.co/api/models/{repo_id}"
        try:
            req = urllib.request.Request(url, method="HEAD")
            with urllib.request.urlopen(req, timeout=NETWORK_TIMEOUT_S) as resp:
                answer.append(f"reachable on the hub (HTTP {resp.status})")
        except urllib.error.HTTPError as exc:
            answer.append(f"the hub answered HTTP {exc.code} (gated, private or misspelled?)")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            answer.append(f"the hub is not reachable ({getattr(exc, 'reason', exc)})")

    worker = threading.Thread(target=ask, daemon=True)
    worker.start()
    worker.join(NETWORK_TIMEOUT_S)
    return answer[0] if answer else f"the hub did not answer within {NETWORK_TIMEOUT_S:g} s (offline?)"


def resolve_model(base: str, *, revision: str | None = None, models_dir: str = "models",
                  allow_network: bool = True) -> ModelSource:
    """Find the model's config.json locally; say plainly what is missing and whether we are offline."""
    path = Path(base).expanduser()
    if path.is_dir():
        cfg = _read_config(path)
        if cfg is None:
            return ModelSource("missing", base, path, None, f"{base} exists but has no readable config.json")
        return ModelSource("local", base, path, cfg, f"local directory {base}")
    if base.endswith(".gguf"):
        from nova.model.gguf import default_import_dir

        imported = default_import_dir(base, models_dir)
        if not path.is_file():
            return ModelSource("missing", base, None, None, f"GGUF file {base} does not exist")
        cfg = _read_config(imported) if imported.is_dir() else None
        where = f" (imported at {imported})" if cfg else " (not imported yet; imported on the first run)"
        return ModelSource("gguf", base, imported if cfg else None, cfg, f"GGUF file {base}{where}")
    if _looks_like_path(base):  # no hub request: its directory is here, so it is a mistyped local path
        close = did_you_mean(base)
        return ModelSource("missing", base, None, None, f"local path {base} does not exist"
                           + (f" (did you mean {close}?)" if close else ""))
    snapshot = cached_snapshot(base, revision)
    if snapshot is not None:
        state = "offline" if offline() else "online allowed"
        return ModelSource("hub_cached", base, snapshot, _read_config(snapshot),
                           f"hub model {base} found in the local cache ({state})")
    if offline() or not allow_network:
        return _with_known_architecture(ModelSource(
            "missing", base, None, None,
            f"hub model {base} is not in the local cache ({hub_cache_dir()}) and HF_HUB_OFFLINE is set"))
    answer = _hub_reachable(base)
    kind: Kind = "hub_remote" if answer.startswith("reachable") else "missing"
    return _with_known_architecture(ModelSource(kind, base, None, None, f"hub model {base} is not cached locally; "
                                                f"{answer}"))


def hub_download_command(repo_id: str) -> str:
    """The command that downloads a hub model with the client installed (nova.system.hub_client)."""
    from nova.system import hub_client

    return f"{hub_client()} download {repo_id}"


def known_architecture(base: str) -> dict[str, Any] | None:
    """config.json facts of a popular hub model, shipped with nova, for estimates before a download."""
    from importlib import resources

    table = json.loads(resources.files("nova").joinpath("resources/architectures.json").read_text(encoding="utf-8"))
    entry = table.get(base)
    return dict(entry) if isinstance(entry, dict) else None


def _with_known_architecture(source: ModelSource) -> ModelSource:
    if source.config is not None:
        return source
    known = known_architecture(source.base)
    if known is None:
        return source
    return ModelSource(source.kind, source.base, source.path, known,
                       source.message + "; memory estimated from nova's table of known architectures")
