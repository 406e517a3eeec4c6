"""What the data pipeline did to the data, as counts a person can check.

Every record that is read ends up in exactly one bucket (kept, skipped by reason,
deduplicated, leaked, over a cap, dropped as too long), so "where did my 2,000 rows go?"
always has an answer. The same object prints for the console and serializes for ``--json``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from nova.errors import Problem
from nova.methods import method_spec

REASONS = {
    "invalid_json": "invalid JSON",
    "truncated_line": "truncated last line",
    "not_utf8": "not UTF-8",
    "too_complex": "nested too deeply, number or line too long",
    "not_an_object": "record is not an object",
    "unknown_format": "no known fields",
    "mixed_formats": "two formats in one file",
    "missing_field": "missing field",
    "empty_field": "empty field",
    "non_string_content": "content is not text",
    "unknown_role": "unknown role",
    "roles_out_of_order": "roles out of order",
    "no_assistant_turn": "no assistant turn to learn from",
    "chosen_equals_rejected": "chosen identical to rejected",
    "bad_loss_weight": "bad loss_weight",
    "bad_label": "label is not true or false",
    "wrong_method": "format does not fit the stage method",
    "template_error": "chat template failed",
    "template_not_prefix_consistent": "chat template not prefix-consistent",
    "template_cannot_express": "chat template cannot write the record",
    "bad_reasoning": "bad reasoning (think tags)",
    "empty_file": "empty file",
    "unreadable": "unreadable file",
    "missing_column": "missing column",
    "not_records": "not a list of records",
}


@dataclass
class SourceReport:
    """Counts for one dataset entry of the config (a file or a directory)."""

    path: str
    formats: dict[str, int] = field(default_factory=dict)
    read: int = 0
    kept: int = 0
    skipped: int = 0
    over_max_samples: int = 0
    files: int = 0
    files_total: int = 0  # a directory: every entry under it (0 for a single file or a hub dataset)
    not_read: dict[str, int] = field(default_factory=dict)  # a directory's entries not read, by why

    def files_line(self) -> str | None:
        """``2 of 9 files read; not read: 5 .txt, 1 .gz`` for a directory; None for one file."""
        if not self.files_total:
            return None
        text = f"{self.files} of {self.files_total} files read"
        if self.not_read:
            text += "; not read: " + ", ".join(f"{n} {label}" for label, n in
                                               sorted(self.not_read.items(), key=lambda kv: (-kv[1], kv[0])))
        return text


@dataclass
class TokenStats:
    """Token lengths before truncation, and how many tokens carry loss after it."""

    sequences: int = 0
    min: int = 0
    median: int = 0
    p95: int = 0
    max: int = 0
    over_max_length: int = 0
    trained_tokens: int = 0
    masked_tokens: int = 0
    reasoning_sequences: int = 0  # sequences whose trained reply has reasoning
    reasoning_trained_tokens: int = 0

    @classmethod
    def from_lengths(cls, lengths: list[int], max_length: int, trained: int, masked: int) -> TokenStats:
        if not lengths:
            return cls()
        ordered = sorted(lengths)
        n = len(ordered)
        return cls(sequences=n, min=ordered[0], median=ordered[n // 2], p95=ordered[min(n - 1, (n * 95) // 100)],
                   max=ordered[-1], over_max_length=sum(1 for x in ordered if x > max_length),
                   trained_tokens=trained, masked_tokens=masked)


@dataclass
class DataReport:
    """The outcome of reading, checking, splitting and (optionally) tokenizing one stage's data."""

    method: str
    sources: list[SourceReport] = field(default_factory=list)
    eval_sources: list[SourceReport] = field(default_factory=list)
    read: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    skipped_files: Counter[str] = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0
    over_max_samples: int = 0
    deduplicated: int = 0
    eval_deduplicated: int = 0
    leakage_removed: int = 0
    split: str = "none"
    weight_repeated: int = 0
    weight_subsampled: int = 0
    capped: int = 0
    train_records: int = 0
    eval_records: int = 0
    max_length: int = 0
    overlong: str = "truncate"
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_no_trained: int = 0
    prompt_truncated: int = 0
    completion_truncated: int = 0
    reasoning_examples: int = 0  # training chats with a trained reply that has reasoning (after the mix)
    plain_examples: int = 0
    reasoning_ratio: float | None = None
    ratio_repeated: int = 0
    ratio_subsampled: int = 0
    rewritten_turns: str = "every"
    per_turn_chats: int = 0  # chats rendered turn by turn (the template rewrites history), train+eval
    per_turn_sequences: int = 0
    empty_think_masked: int = 0
    replayed: dict[str, int] = field(default_factory=dict)  # earlier phase -> sequences mixed in (retention.replay)
    replay_share: float | None = None
    desirable: int = 0  # KTO: training replies labelled good (after the mix)
    undesirable: int = 0
    tokens: TokenStats | None = None
    eval_tokens: TokenStats | None = None
    token_note: str | None = None
    tokenizer: str | None = None
    cache: str | None = None
    notes: list[str] = field(default_factory=list)

    MAX_PROBLEMS_JSON = 50

    def add_problem(self, reason: str, problem: Problem) -> None:
        """Count a skipped record by reason and remember where it is (all of them: a DataError
        under on_error=fail lists the first few and the total)."""
        self.skipped[reason] += 1
        self.add_file_problem(problem)

    def add_file_problem(self, problem: Problem) -> None:
        self.problem_count += 1
        self.problems.append(problem)

    @property
    def kept(self) -> int:
        """Records that passed validation (before dedup, split and caps)."""
        return self.read - sum(self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able view (``nova data check --json``, the run directory's data report)."""
        out = asdict(self)
        out["kept"] = self.kept
        out["skipped"] = dict(self.skipped)
        out["skipped_files"] = dict(self.skipped_files)
        out["problems"] = [p.render() for p in self.problems[: self.MAX_PROBLEMS_JSON]]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataReport:
        """Rebuild a report saved with ``to_dict`` (the tokenization cache stores one)."""
        data = dict(data)
        data.pop("kept", None)
        report = cls(method=data.pop("method"))
        report.sources = [SourceReport(**s) for s in data.pop("sources")]
        report.eval_sources = [SourceReport(**s) for s in data.pop("eval_sources")]
        report.skipped = Counter(data.pop("skipped"))
        report.skipped_files = Counter(data.pop("skipped_files"))
        report.problems = [Problem(*p.split(": ", 1)) if ": " in p else Problem("", p)
                           for p in data.pop("problems")]
        for key in ("tokens", "eval_tokens"):
            value = data.pop(key)
            setattr(report, key, TokenStats(**value) if value else None)
        for key, value in data.items():
            setattr(report, key, value)
        return report

    def lines(self) -> list[str]:
        """Console lines, most important first; ASCII only."""
        out = [f"data ({self.method}): read {self.read}, kept {self.kept}, skipped {sum(self.skipped.values())}"
               + (f" -> train {self.train_records}, eval {self.eval_records}" if self.split != "none" or
                  self.train_records else "")]
        for s in [*self.sources, *self.eval_sources]:
            out.append(f"  source {s.path}: {s.read} read, {s.kept} kept, {s.skipped} skipped"
                       + (f", {s.over_max_samples} over max_samples" if s.over_max_samples else "")
                       + f" [{', '.join(f'{k} x{v}' for k, v in sorted(s.formats.items()))}]")
            if (files := s.files_line()) is not None:
                out.append(f"    files: {files}")
        for reason, count in sorted(self.skipped.items()):
            out.append(f"  skipped {count}: {REASONS.get(reason, reason)}")
        for reason, count in sorted(self.skipped_files.items()):
            if not reason.startswith("not read: "):  # said per source, on its files line
                out.append(f"  skipped {count} file(s): {REASONS.get(reason, reason)}")
        out += self._mix_lines()
        out += [f"  problem {p.render()}".rstrip() for p in self.problems[:5]]
        if self.problem_count > 5:
            out.append(f"  ... {self.problem_count - 5} more problem(s) (see --json)")
        out += self._token_lines()
        out += [f"  note: {n}" for n in self.notes]
        return out

    def _mix_lines(self) -> list[str]:
        counts = [("deduplicated (train)", self.deduplicated), ("deduplicated (eval)", self.eval_deduplicated),
                  ("removed from eval (also in train)", self.leakage_removed),
                  ("over per-source max_samples", self.over_max_samples),
                  ("repeated by weight", self.weight_repeated), ("left out by weight", self.weight_subsampled),
                  ("over max_samples", self.capped)]
        out = [f"  {label}: {n}" for label, n in counts if n]
        out.append(f"  holdout: {self.split}")
        if self.desirable or self.undesirable:
            out.append(self._label_line())
        if self.replayed:
            total = sum(self.replayed.values())
            out.append(f"  replay: {total} sequences of earlier phases mixed in ("
                       + ", ".join(f"{k} {v}" for k, v in self.replayed.items())
                       + f"; retention.replay {self.replay_share}: {_percent(total, total + self.train_records)} "
                       "of the training sequences)")
        chats = self.reasoning_examples + self.plain_examples
        if self.reasoning_examples or self.reasoning_ratio is not None:
            held = (f" [data.reasoning_ratio {self.reasoning_ratio}: {self.ratio_repeated} repeated, "
                    f"{self.ratio_subsampled} left out]" if self.reasoning_ratio is not None else "")
            out.append(f"  reasoning: {self.reasoning_examples} of {chats} training chats "
                       f"({_percent(self.reasoning_examples, chats)}), plain {self.plain_examples}{held}")
        return out

    def _label_line(self) -> str:
        """KTO's good/bad counts; unequal counts call for weights (KTO paper, eq. 8)."""
        good, bad = self.desirable, self.undesirable
        line = f"  labels: {good} desirable, {bad} undesirable"
        if good and bad and good != bad:
            line += (f" (unequal: keep kto.desirable_weight x {good} / (kto.undesirable_weight x {bad}) between 1 "
                     f"and 1.33, e.g. undesirable_weight {good / bad:.2f} with desirable_weight 1)")
        return line

    def _token_lines(self) -> list[str]:
        if self.tokens is None:
            return [f"  tokens: not computed ({self.token_note or 'no tokenizer'})"]
        t = self.tokens
        out = [f"  tokens ({self.tokenizer}): min {t.min}, median {t.median}, p95 {t.p95}, max {t.max}; "
               f"{t.over_max_length} of {t.sequences} over max_length {self.max_length} ({self.overlong}): "
               f"train+eval: {self.truncated} truncated, {self.dropped_too_long} dropped"
               + (f", {self.dropped_no_trained} dropped (no trained token left after truncation)"
                  if self.dropped_no_trained else "")]
        if self.prompt_truncated or self.completion_truncated:
            out.append(f"  {self.method}: {self.prompt_truncated} prompts truncated (start cut), "
                       f"{self.completion_truncated} completions truncated (end cut)")
        total = t.trained_tokens + t.masked_tokens
        share = 100.0 * t.trained_tokens / total if total else 0.0
        if method_spec(self.method).generates:  # nothing in the data is trained: the model's own completions are
            out.append(f"  prompt tokens {t.masked_tokens} (the completions are generated while training)")
        else:
            out.append(f"  trained tokens {t.trained_tokens} ({share:.1f}%), masked {t.masked_tokens}")
        if t.reasoning_sequences:
            plain = t.trained_tokens - t.reasoning_trained_tokens
            out.append(f"  trained tokens by reply: reasoning {t.reasoning_trained_tokens} "
                       f"({_percent(t.reasoning_trained_tokens, t.trained_tokens)}, {t.reasoning_sequences} "
                       f"sequences), plain {plain} ({_percent(plain, t.trained_tokens)})")
        if self.per_turn_chats:
            out.append(f"  per turn: {self.per_turn_chats} chats became {self.per_turn_sequences} sequences (the chat "
                       f"template renders earlier turns differently once later turns follow; each reply is trained as "
                       f"the final turn; data.rewritten_turns: {self.rewritten_turns})")
        if self.empty_think_masked:
            out.append(f"  empty think blocks not trained: {self.empty_think_masked} (data.train_empty_think: false)")
        if self.cache:
            out.append(f"  cache: {self.cache}")
        return out


def _percent(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "0.0%"
