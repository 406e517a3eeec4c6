"""The parity check every export runs: the written artifact against the model it claims to be.

The artifact is run the way its users run it (llama.cpp through ``xllamacpp`` for a GGUF, a GGUF
base with a GGUF LoRA; plain transformers + PEFT for a PEFT adapter) on the same token ids as the
reference (the trained composition of the run, or the merged model), on a few held-out chats and
the run's smoke prompts, every position scored. Two figures: the share of positions whose
next-token argmax agrees, and the largest absolute logit difference. Each output type has its
threshold (``TOLERANCES``): float types must agree almost exactly, quantized types within what
their rounding costs. An export below its threshold is refused and nothing is kept.

Thresholds, measured with ``scripts/export_parity.py`` on a QLoRA chain of the demo's SmolLM2-135M
(two phases, nf4; the trained composition computed in fp32 on a CPU; 616 positions of 4 held-out chats
and 2 smoke prompts; docs/export.md, docs/export-parity.json): over the dequantized base, f32 agrees on
100.0% (largest logit difference 0.11: llama.cpp keeps its KV cache in f16), f16 on 99.7% (0.20),
q8_0 95.1%, q6_k 90.1%, q5_k_m 83.1%, q4_k_m 80.8%, and q4_0 16.7% (re-rounding the dequantized nf4
weights onto q4_0's grid breaks this small model: the check refuses it). Over the ORIGINAL base every
type agrees on only 54-66% (logit differences over 21), so each threshold below refuses the wrong
base. Quantized types are bounded by agreement alone: their logit differences are large by design.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nova.errors import NovaError
from nova.lazy import require


@dataclass(frozen=True)
class Tolerance:
    """The least next-token agreement and the largest logit difference an output type may show."""

    min_agreement: float
    max_logit_diff: float | None  # None: not bounded (quantized types: agreement is the measure)


TOLERANCES: dict[str, Tolerance] = {
    "f32": Tolerance(0.98, 1.0),
    "f16": Tolerance(0.98, 1.0),
    "q8_0": Tolerance(0.9, None),
    "q6_k": Tolerance(0.85, None),
    "q5_k_m": Tolerance(0.75, None),
    "q4_k_m": Tolerance(0.75, None),
    "q4_0": Tolerance(0.7, None),
    "peft": Tolerance(0.99, 0.5),  # the same quantized base and the folded adapter: summation order only
}


@dataclass
class Parity:
    """What the check measured, and against what; ``skipped`` says why it did not run (--no-check)."""

    outtype: str
    candidate: str = ""
    reference: str = ""
    agreement: float | None = None
    max_logit_diff: float | None = None
    sequences: int = 0
    tokens: int = 0
    min_agreement: float | None = None
    max_allowed_diff: float | None = None
    vs_trained: dict[str, Any] | None = None  # an artifact that is not the trained composition, against it
    seconds: float = 0.0
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        if self.skipped is not None:
            return True
        agree = self.agreement is not None and self.min_agreement is not None and self.agreement >= self.min_agreement
        close = self.max_allowed_diff is None or (self.max_logit_diff is not None
                                                  and self.max_logit_diff <= self.max_allowed_diff)
        return agree and close

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["passed"] = self.passed
        out["seconds"] = round(self.seconds, 2)
        return out

    def lines(self) -> list[str]:
        """What ``nova export`` prints."""
        if self.skipped is not None:
            return [f"parity: not checked ({self.skipped})"]
        bound = f", logit diff <= {self.max_allowed_diff:g}" if self.max_allowed_diff is not None else ""
        out = [f"parity: {self.candidate} vs {self.reference}: next-token agreement {100 * (self.agreement or 0):.2f}% "
               f"on {self.tokens} positions of {self.sequences} held-out chats and prompts, largest logit difference "
               f"{self.max_logit_diff:.4g} (threshold {self.outtype}: agreement >= "
               f"{100 * (self.min_agreement or 0):.0f}%{bound}) {'PASS' if self.passed else 'FAIL'} "
               f"({self.seconds:.1f} s)"]
        if self.vs_trained is not None:
            out.append(f"  vs the trained model: agreement {100 * self.vs_trained['agreement']:.2f}%, largest logit "
                       f"difference {self.vs_trained['max_logit_diff']:.4g}")
        return out + [f"  {n}" for n in self.notes]

    def require(self) -> None:
        """NovaError (nothing is kept) when the figures miss the threshold."""
        if self.passed:
            return
        need = 100 * (self.min_agreement or 0)
        raise NovaError(f"parity check failed: {self.candidate} agrees with {self.reference} on "
                        f"{100 * (self.agreement or 0):.2f}% of next tokens (needs {need:.0f}%), largest logit "
                        f"difference {self.max_logit_diff:.4g}"
                        + (f" (allowed {self.max_allowed_diff:g})" if self.max_allowed_diff is not None else "")
                        + "; nothing was written", hint=("a float export should pass: report it; " if self.outtype in
                                                         ("f16", "f32", "peft") else "a larger --outtype (q8_0, "
                                                         "f16) keeps more of the model; ")
                        + "--no-check writes it anyway (recorded in nova_export.json)")


def tolerance(outtype: str) -> Tolerance:
    """The threshold of an output type (against a reference computed in fp32: nova.export.run_source)."""
    return TOLERANCES.get(outtype, TOLERANCES["q4_0"])


def compare(reference: Sequence[Any], candidate: Sequence[Any]) -> tuple[float, float, int]:
    """(next-token agreement, largest absolute logit difference, positions) of two lists of logit arrays
    (positions x vocab, torch or numpy); the candidate's vocabulary may be padded beyond the reference's."""
    np = require("numpy")
    agree = total = 0
    worst = 0.0
    for ref, cand in zip(reference, candidate, strict=True):
        a = ref.numpy() if hasattr(ref, "numpy") else np.asarray(ref)
        b = cand.numpy() if hasattr(cand, "numpy") else np.asarray(cand)
        b = b[: a.shape[0], : a.shape[1]]
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += int(a.shape[0])
        worst = max(worst, float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()))
    return (agree / total if total else 0.0), worst, total


def measure(outtype: str, candidate: str, reference: str, ref_logits: Sequence[Any], cand_logits: Sequence[Any],
            started: float) -> Parity:
    """The Parity of ``cand_logits`` against ``ref_logits`` under the threshold of ``outtype``."""
    agreement, diff, tokens = compare(ref_logits, cand_logits)
    tol = tolerance(outtype)
    return Parity(outtype, candidate, reference, agreement, diff, len(ref_logits), tokens, tol.min_agreement,
                  tol.max_logit_diff, seconds=time.monotonic() - started)


def vs_trained(trained: Sequence[Any] | None, cand_logits: Sequence[Any]) -> dict[str, Any] | None:
    """The candidate against the trained composition, for an artifact that is not meant to be it."""
    if trained is None:
        return None
    agreement, diff, tokens = compare(trained, cand_logits)
    return {"agreement": agreement, "max_logit_diff": diff, "tokens": tokens}


def llama_cpp_logits(model_path: Path, batches: Sequence[Any], lora: Path | None = None) -> list[Any]:
    """llama.cpp's logits (every position) of each 1 x n token tensor, with ``lora`` applied when given."""
    from nova.export import llama_cpp

    n_ctx = max([int(b.shape[1]) for b in batches] + [8]) + 8
    runner = llama_cpp.load(model_path, n_ctx=n_ctx, lora=lora)
    try:
        return [runner.logits([int(t) for t in b[0].tolist()]) for b in batches]
    finally:
        runner.close()


def require_llama_cpp(outtype: str | None = None) -> None:
    """Fail before any work when llama.cpp, which the GGUF check runs, is missing; a quantized preset
    (q4_k_m, ...) needs it to be written at all, which is said first (--no-check would not help)."""
    from nova.export import llama_cpp
    from nova.export.gguf_quant import PRESETS, quantizer

    if outtype in PRESETS:
        quantizer(outtype)

    try:
        llama_cpp.library()
    except NovaError as exc:
        raise NovaError(f"the parity check of a GGUF export runs it with llama.cpp: {exc.message}",
                        hint="pip install xllamacpp (or 'nova-tune[llamacpp]'); --no-check exports without the "
                        "check (recorded in nova_export.json)") from None


def skipped(outtype: str, reason: str) -> Parity:
    return Parity(outtype, skipped=reason)
