"""Time the base model's identity (nova.model.identity): the first full hash, then a cached lookup.

Usage: PYTHONPATH=src python scripts/measure_weight_hash.py [MODEL_DIR]   (default: SmolLM2-135M)
The figures are written down in docs/resume.md.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    model = Path(sys.argv[1] if len(sys.argv) > 1 else "models/smollm2-135m-instruct")
    os.environ["NOVA_CACHE_DIR"] = tempfile.mkdtemp(prefix="nova-hash-")  # a cold cache
    from nova.files import dir_size, human_bytes
    from nova.model.identity import directory_identity

    started = time.perf_counter()
    first = directory_identity(model)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    again = directory_identity(model)
    warm = time.perf_counter() - started
    assert first == again
    print(f"{model} ({human_bytes(dir_size(model))}): first hash {cold:.2f} s, cached {warm * 1000:.1f} ms")


if __name__ == "__main__":
    main()
