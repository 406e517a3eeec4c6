"""``nova export --model``: a merged model as GGUF or an Ollama directory, with the parity check.

The reference is the merged model itself, loaded with plain transformers in fp32 (``nova merge``
checked it against the trained composition and recorded that in nova_merge.json). The check
prompts are its run's held-out chats and smoke prompts when nova merged it and the run is still
there, else a few fixed chats. A GGUF is run with llama.cpp before it is renamed into place; an
Ollama directory that copies the safetensors is checked as what ``ollama create`` converts them to
(an f16 GGUF, written to a temporary file and run with llama.cpp).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nova.export.gguf_export import ExportResult, export_gguf
from nova.export.parity import Parity, llama_cpp_logits, measure, require_llama_cpp
from nova.files import temp_sibling

Say = Callable[[str], None]
FIXED_CHATS = [
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "The capital of France is Paris."}],
    [{"role": "user", "content": "Explain gradient descent in one sentence."}],
    [{"role": "user", "content": "Write a haiku about autumn."}],
]


def _quiet(_: str) -> None:
    """The default ``say``: a library call prints nothing unless asked."""


class Verifier:
    """Runs a written GGUF with llama.cpp against the merged model, on the model's check prompts."""

    def __init__(self, model_dir: Path, outtype: str, say: Say) -> None:
        self.model_dir = model_dir
        self.outtype = outtype
        self.say = say
        self.reference: list[Any] | None = None

    def _batches(self, tok: Any) -> list[Any]:
        from nova.export.run_source import MAX_CHECK_TOKENS, check_conversations
        from nova.merge.parity import encode_conversations
        from nova.runs.card import run_of_model_dir

        record = run_of_model_dir(self.model_dir)
        chats = check_conversations(record, []) if record is not None else []
        return encode_conversations(tok, chats or FIXED_CHATS, MAX_CHECK_TOKENS)

    def __call__(self, path: Path, model: Any, tok: Any) -> Parity:
        """The check of the GGUF at ``path`` written from ``model`` (any dtype: the reference is fp32)."""
        from nova.merge.parity import compute_logits

        started = time.monotonic()
        self.say(f"parity check: running {path.name.split('.tmp')[0].lstrip('.')} with llama.cpp")
        batches = self._batches(tok)
        reference = compute_logits(model.float(), batches)
        candidate = llama_cpp_logits(path, batches)
        parity = measure(self.outtype, f"llama.cpp ({self.outtype} GGUF)", "the merged model (transformers, fp32)",
                         reference, candidate, started)
        parity.require()
        return parity

    def copied(self, directory: Path) -> Parity:
        """The copied safetensors, as the f16 GGUF ``ollama create`` converts them to (a temporary file)."""
        probe = temp_sibling(directory / "model-f16.gguf", "check")
        verifier = Verifier(self.model_dir, "f16", self.say)
        try:
            parity = export_gguf(directory, probe, outtype="f16", verify=verifier).parity
        finally:
            probe.unlink(missing_ok=True)
        parity.candidate = "the copied safetensors as an f16 GGUF (what ollama create converts them to), in llama.cpp"
        return parity


def export_model(model_dir: Path, out: Path, fmt: str, outtype: str | None, *, force: bool = False,
                 check: bool = True, say: Say = _quiet) -> ExportResult:
    """Export a merged model directory as ``gguf`` or ``ollama``, checked unless ``check`` is False."""
    from nova.data.system import SystemPrompt
    from nova.export.ollama import export_ollama
    from nova.export.parity import skipped
    from nova.runs.card import MERGE_INFO
    from nova.runs.jsonl import read_json

    if check:
        require_llama_cpp(outtype)
    kind = outtype or ("f16" if fmt == "gguf" else "safetensors")
    verifier = Verifier(model_dir, outtype or "f16", say) if check else None
    if fmt == "gguf":
        result = export_gguf(model_dir, out, outtype=outtype or "f16", force=force, verify=verifier)
        result.parity = result.parity or skipped(kind, "--no-check")
        _write_record(result, model_dir)
        return result
    system = SystemPrompt.from_dict((read_json(model_dir / MERGE_INFO) or {}).get("system_prompt"))
    result = export_ollama(model_dir, out, outtype=outtype, force=force, verify=verifier, system=system)
    result.parity = result.parity or skipped(kind, "--no-check")
    return result


def _write_record(result: ExportResult, model_dir: Path) -> None:
    """``<name>.nova_export.json`` beside a GGUF file: where it came from and its parity figures."""
    import json

    from nova import __version__
    from nova.export.gguf_export import EXPORT_INFO
    from nova.files import portable_path, write_text_atomic

    path = result.path.with_name(f"{result.path.stem}.{EXPORT_INFO}")
    info = {"format": 2, "kind": "gguf", "file": result.path.name, "source": portable_path(model_dir, path.parent),
            "parity": result.parity.to_dict(), "nova_version": __version__}
    write_text_atomic(path, json.dumps(info, indent=2) + "\n")
    result.files = [result.path, path]
