"""A skipped share is a verdict: the share of records skipped under ``on_error: skip``, judged once.

Above ``data.skip_warn_share`` the data report says so (preflight and the dry run warn); above
``data.skip_fail_share`` the data is refused, so preflight fails and training does not start.
"""

from __future__ import annotations

from nova.config.data_schema import DataConfig
from nova.data.report import REASONS, DataReport
from nova.errors import DataError, Problem


def skipped_verdict(report: DataReport, cfg: DataConfig) -> tuple[str, str, str] | None:
    """("warn" or "fail", what, fix) when the share of records skipped is above data.skip_warn_share or
    data.skip_fail_share; None when it is not. The data report, preflight, the dry run and training all
    read it from here, so they agree."""
    skipped = sum(report.skipped.values())
    if not report.read or not skipped or skipped == report.read:  # none kept: "no usable training records" says it
        return None
    share = skipped / report.read
    level = ("fail" if share > cfg.skip_fail_share else "warn" if share > cfg.skip_warn_share else None)
    if level is None:
        return None
    top = ", ".join(f"{n} {REASONS.get(r, r)}" for r, n in report.skipped.most_common(3))
    limit = cfg.skip_fail_share if level == "fail" else cfg.skip_warn_share
    what = (f"{skipped} of {report.read} records skipped ({share:.0%}, above data.skip_{level}_share {limit:g}): "
            f"{top}")
    first = next((p for p in report.problems if p.hint), None)
    fix = (f"fix the records ({first.where}: {first.hint}; nova data check lists every one)" if first else
           "fix the records nova data check lists") + f", or raise data.skip_{level}_share if this is expected"
    return level, what, fix


def judge_skipped(report: DataReport, cfg: DataConfig) -> None:
    """A skipped share above skip_fail_share refuses the data; above skip_warn_share, a note says so."""
    verdict = skipped_verdict(report, cfg)
    if verdict is None:
        return
    level, what, fix = verdict
    if level == "fail":
        raise DataError("most of the data cannot be used", [Problem("data", what, fix), *report.problems[:5]])
    report.notes[:] = [n for n in report.notes if " records skipped (" not in n]  # judged again after tokenizing
    report.notes.append(f"{what} ({fix})")
