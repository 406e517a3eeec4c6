"""The preflight answer: one verdict, the checks behind it, and a stable JSON form.

JSON schema (``schema_version`` 1; documented in docs/memory.md):
``{schema_version, verdict, checks: [{name, status, message, fix}], gpus: [...],
selected_gpu, estimate: {total_bytes, total_gib, breakdown: {...}, ...} | null,
auto_fit: {...} | null, environment: {...}}``. Keys are only ever added, never renamed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from nova.files import GiB, MiB

Status = Literal["pass", "warn", "fail", "skip"]
Verdict = Literal["pass", "warn", "fail"]
SCHEMA_VERSION = 1
TIGHT = 0.90  # a resource used above 90% is a warning: allocator spikes, longer batches, log growth


def gib(n: float) -> str:
    """GiB with one decimal; MiB below 1 GiB so tiny models do not read '0.0 GiB'."""
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"


@dataclass(frozen=True)
class Check:
    """One check: its status, what it found, and the next step (empty when nothing to do)."""

    name: str
    status: Status
    message: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "message": self.message, "fix": self.fix}


@dataclass
class PreflightReport:
    """All checks of one config; ``verdict`` is the worst status (skips do not count)."""

    checks: list[Check] = field(default_factory=list)
    gpus: list[dict[str, Any]] = field(default_factory=list)
    selected_gpu: int | None = None
    estimate: dict[str, Any] | None = None
    auto_fit: dict[str, Any] | None = None
    environment: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> Verdict:
        statuses = {c.status for c in self.checks}
        if "fail" in statuses:
            return "fail"
        return "warn" if "warn" in statuses else "pass"

    def add(self, check: Check) -> None:
        self.checks.append(check)

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "verdict": self.verdict,
                "checks": [c.to_dict() for c in self.checks], "gpus": list(self.gpus),
                "selected_gpu": self.selected_gpu, "estimate": self.estimate, "auto_fit": self.auto_fit,
                "environment": dict(self.environment)}

    def lines(self) -> list[str]:
        """Console lines, ASCII only: one per check, its fix indented below, then the verdict."""
        out = []
        width = max((len(c.name) for c in self.checks), default=0)
        for c in self.checks:
            out.append(f"[{c.status.upper():4}] {c.name.ljust(width)}  {c.message}")
            if c.fix and c.status in ("warn", "fail"):
                out.append(f"       {' ' * width}  fix: {c.fix}")
        if self.estimate:
            total = self.estimate["total_bytes"]
            unit, div = ("GiB", GiB) if total >= GiB else ("MiB", MiB)
            parts = ", ".join(f"{k} {v / div:.2f}" for k, v in self.estimate["breakdown"].items() if v)
            out.append(f"estimate: {total / div:.1f} {unit} peak ({parts} {unit})")
        out.append(f"verdict: {self.verdict}")
        return [line.encode("ascii", "replace").decode("ascii") for line in out]
