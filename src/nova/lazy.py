"""One place to import heavy optional packages, with an install hint instead of a traceback.

torch, transformers, peft, trl and bitsandbytes take seconds to import, so they are only
imported inside the code that needs them (``nova --help`` must answer in well under a second).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from nova.errors import NovaError

_HINTS = {
    "torch": "install the CPU build with 'pip install torch==2.13.0' or a CUDA build from pytorch.org",
    "bitsandbytes": "pip install bitsandbytes (needed for 4-bit and 8-bit quantization)",
    "pynvml": "pip install nvidia-ml-py",
    "matplotlib": "pip install matplotlib",
    "gguf": "pip install gguf",
}


def require(name: str) -> ModuleType:
    """Import ``name`` or raise a NovaError that says how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        top = name.split(".")[0]
        hint = _HINTS.get(top, f"pip install {top}")
        raise NovaError(f"python package '{top}' is not available: {exc}", hint=hint) from exc


def resolve(target: str) -> Any:
    """The function a ``module:function`` path names (a method spec's trainer, imported when it trains)."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)
