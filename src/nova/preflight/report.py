"""The preflight answer: one verdict, the checks behind it, and a stable JSON form.

JSON schema (``schema_version`` 1; documented in docs/memory.md):
``{schema_version, verdict, checks: [{name, status, message, fix}], gpus: [...],
selected_gpu, estimate: {total_bytes, total_gib, breakdown: {...}, ...} | null,
auto_fit: {...} | null, environment: {...}}``. Keys are only ever added, never renamed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from nova.console import wrap
from nova.files import GiB, MiB

Status = Literal["pass", "warn", "fail", "skip"]
Verdict = Literal["pass", "warn", "fail"]
SCHEMA_VERSION = 1
LABEL_MAX = 16  # the name column on a terminal: a longer name pushes its message along, not the column
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

    def lines(self, width: int | None = None) -> list[str]:
        """Console lines, ASCII only: one per check, its fix indented below, then the estimate and the verdict.

        ``width`` None (piped output): one record per line, every name in one column, as scripts read it.
        On a terminal of ``width`` columns the checks of each phase and stage come under a heading of their
        own, so the name column holds only the check's name (``memory``, not ``memory[doica/sft]``) and
        each message wraps between words under itself.
        """
        out = self._terminal_lines(width) if width is not None else self._record_lines()
        if self.estimate:
            total = self.estimate["total_bytes"]
            unit, div = ("GiB", GiB) if total >= GiB else ("MiB", MiB)
            parts = ", ".join(f"{k} {v / div:.2f}" for k, v in self.estimate["breakdown"].items() if v)
            out += wrap(f"estimate: {total / div:.1f} {unit} peak ({parts} {unit})", width, indent=10)
        out.append(f"verdict: {self.verdict}")
        return [line.encode("ascii", "replace").decode("ascii") for line in out]

    def _record_lines(self) -> list[str]:
        out = []
        width = max((len(c.name) for c in self.checks), default=0)
        for c in self.checks:
            out.append(f"[{c.status.upper():4}] {c.name.ljust(width)}  {c.message}")
            if c.fix and c.status in ("warn", "fail"):
                out.append(f"       {' ' * width}  fix: {c.fix}")
        return out

    def _terminal_lines(self, width: int) -> list[str]:
        groups: dict[str, list[tuple[str, Check]]] = {}
        for c in self.checks:
            name, _, scope = c.name.partition("[")
            groups.setdefault(scope.rstrip("]"), []).append((name, c))
        column = min(max((len(n) for g in groups.values() for n, _ in g), default=0), LABEL_MAX)
        out: list[str] = []
        for scope, checks in groups.items():
            if scope:
                out.append(f"{scope}:")
            for name, c in checks:
                head = f"[{c.status.upper():4}] {name.ljust(column)}  "
                out += wrap(head + c.message, width, indent=len(head) if len(name) <= column else None)
                if c.fix and c.status in ("warn", "fail"):
                    pad = " " * (7 + column + 2)
                    out += wrap(f"{pad}fix: {c.fix}", width, indent=len(pad) + 5)
        return out
