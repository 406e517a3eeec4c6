"""``nova status`` as text: one block per phase, one fact per line, ASCII only."""

from __future__ import annotations

import time

from nova.console import human_seconds
from nova.monitor.status import PhaseStatus, RunStatus
from nova.runs.jsonl import number


def _ago(seconds: float) -> str:
    return f"{human_seconds(max(seconds, 0))} ago"


def _where(ps: PhaseStatus) -> str:
    where = f"{ps.stage}"
    if ps.stage in ps.stages and len(ps.stages) > 1:
        where += f" (stage {ps.stages.index(ps.stage) + 1} of {len(ps.stages)}: {', '.join(ps.stages)})"
    if ps.step is not None:
        total = "" if ps.total_steps is None else f" of {'' if ps.total_exact else '~'}{ps.total_steps}"
        pct = f" ({100 * ps.step / ps.total_steps:.0f}%)" if ps.total_steps else ""
        where += f", step {ps.step}{total}{pct}"
    return where


def _numbers(ps: PhaseStatus) -> list[str]:
    out = []
    losses = []
    if ps.train_loss is not None:
        losses.append(f"train {ps.train_loss:.4f}")
    if ps.eval_loss is not None:
        losses.append(f"eval {ps.eval_loss:.4f} (step {ps.eval_step})")
    if losses:
        out.append(f"  loss:       {', '.join(losses)}")
    out += _reward_lines(ps.rewards)
    speed = []
    if ps.tokens_per_second is not None:
        speed.append(f"{ps.tokens_per_second:.0f} tokens/s")
    if ps.seconds_per_step is not None:
        speed.append(f"{ps.seconds_per_step:.2f} s/step")
    if speed:
        out.append(f"  speed:      {', '.join(speed)}")
    if ps.eta_seconds is not None:
        out.append(f"  eta:        {human_seconds(ps.eta_seconds)} to the end of stage {ps.stage}")
    return out


def _reward_lines(rewards: dict[str, float]) -> list[str]:
    """GRPO: the total reward with each reward's mean, then KL and completion length."""
    if "reward" not in rewards:
        return []
    each = [f"{k[len('rewards/'):-len('/mean')]} {v:.3f}" for k, v in rewards.items() if k.startswith("rewards/")]
    line = f"  reward:     {rewards['reward']:.3f}" + (f" ({', '.join(each)})" if each else "")
    if "eval_reward" in rewards:
        line += f", eval {rewards['eval_reward']:.3f}"
    out = [line]
    more = [f"kl {rewards['kl']:.4g}" if "kl" in rewards else "",
            f"completion length {rewards['completions/mean_length']:.1f} tokens"
            if "completions/mean_length" in rewards else "",
            f"groups without signal {rewards['frac_reward_zero_std']:.0%}" if "frac_reward_zero_std" in rewards else ""]
    if any(more):
        out.append(f"  grpo:       {', '.join(m for m in more if m)}")
    return out


def _alerts(ps: PhaseStatus) -> list[str]:
    if not ps.alert_count:
        return ["  alerts:     none"]
    out = [f"  alerts:     {ps.alert_count}, latest:"]
    for a in ps.last_alerts:
        t = number(a.get("time"))
        stamp = time.strftime("%H:%M:%S", time.localtime(t)) if t is not None else "?"
        out.append(f"    {stamp} {a.get('message', a.get('kind', '?'))}")
    return out


def phase_lines(ps: PhaseStatus, now: float) -> list[str]:
    """The text block of one phase: one fact per line, missing facts left out."""
    head = f"{ps.name}: {ps.status}"
    if ps.process.state != "none" or ps.status in ("running", "stopped"):
        head += f" - process {ps.process.describe()}"
    out = [head, f"  run dir:    {ps.run_dir}"]
    if ps.doing and ps.eta_seconds is None:  # while it trains with an ETA, the step and the ETA say it all
        out.append(f"  now:        {ps.doing}")
    if ps.note:
        out.append(f"  note:       {ps.note}")
    if ps.stage is not None:
        out.append(f"  stage:      {_where(ps)}")
    out += _numbers(ps)
    if ps.checkpoint:
        out.append(f"  checkpoint: {ps.checkpoint}")
    if ps.last_update is not None:
        out.append(f"  updated:    {_ago(now - ps.last_update)} (last metrics line)")
    if ps.started is not None:
        took = f", took {human_seconds(ps.ended - ps.started)}" if ps.ended and ps.ended >= ps.started else ""
        out.append(f"  started:    {_ago(now - ps.started)}{took}")
    if ps.recoveries:
        out.append(f"  recoveries: {ps.recoveries} (out-of-memory retries with a smaller batch; see recoveries.jsonl)")
    if ps.error:
        out.append(f"  error:      {ps.error}")
    return out + _forgetting(ps) + _gate(ps) + _alerts(ps)


def _gate(ps: PhaseStatus) -> list[str]:
    """The phase's eval gate (its eval: tasks and limits), when it has one."""
    if not ps.gate:
        return []
    if ps.gate.get("passed"):
        return ["  eval gate:  passed"]
    state = "FAILED, continued with --force-gates" if ps.gate.get("forced") else "FAILED (the pipeline stopped here)"
    failed = ps.gate.get("failed") or []
    return [f"  eval gate:  {state}" + (f": {failed[0]}" if failed else "")]


def _forgetting(ps: PhaseStatus) -> list[str]:
    """One line per earlier phase (or retention set): its holdout loss before and after this phase."""
    out = []
    for name, row in ps.forgetting.items():
        before, after, change = (number(row.get(k)) for k in ("eval_loss_before", "eval_loss_after", "change"))
        if before is None or after is None or change is None:
            continue
        label = "forgetting: " if not out else " " * 12
        out.append(f"  {label}{name} holdout loss {before:.4f} -> {after:.4f} ({change:+.1%})")
    return out


def _eval_lines(status: RunStatus) -> list[str]:
    """The task scores of eval.json (nova eval, eval gates): the table, then each gate."""
    from nova.runs.eval_results import gate_lines, legend, table_lines

    table = table_lines(status.eval) if status.eval else []
    if not table:
        return []
    return ["task scores (eval.json):", *[f"  {line}" for line in table], f"  {legend()}",
            *[f"  {line}" for line in gate_lines(status.eval or {})]]


def status_lines(status: RunStatus) -> list[str]:
    """All of ``nova status`` as ASCII lines."""
    out = []
    if status.kind == "pipeline":
        counts: dict[str, int] = {}
        for p in status.phases:
            counts[p.status] = counts.get(p.status, 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in counts.items())
        out.append(f"pipeline {status.path}: {len(status.phases)} phases ({summary})")
    for p in status.phases:
        out.extend(phase_lines(p, status.checked))
    out += _eval_lines(status)
    return [line.encode("ascii", "replace").decode("ascii") for line in out]


def summary_line(ps: PhaseStatus, name_width: int) -> str:
    """One phase in one line (the list of ``nova status`` with no path): state, stage and step, loss, ETA or
    what it is doing, alive or not, alerts."""
    parts = []
    if ps.stage is not None:
        step = ""
        if ps.step is not None:
            total = "" if ps.total_steps is None else f"/{'' if ps.total_exact else '~'}{ps.total_steps}"
            step = f" step {ps.step}{total}"
        parts.append(f"{ps.stage}{step}")
    if ps.train_loss is not None:
        parts.append(f"loss {ps.train_loss:.4f}" + (f", eval {ps.eval_loss:.4f}" if ps.eval_loss is not None else ""))
    if ps.doing and ps.eta_seconds is None:
        parts.append(f"now {ps.doing}")
    elif ps.eta_seconds is not None:
        parts.append(f"eta {human_seconds(ps.eta_seconds)}")
    alive = ps.process.state == "running"
    parts.append(f"alive (pid {ps.process.pid})" if alive else (
        ps.process.describe() if ps.process.state == "other_host" else "not running"))
    if ps.alert_count:
        parts.append(f"{ps.alert_count} alert{'s' if ps.alert_count > 1 else ''}")
    return f"  {ps.name.ljust(name_width)}  {ps.status:8} {'; '.join(parts)}"


def root_lines(root: str, entries: list[tuple[str, RunStatus | Exception]]) -> list[str]:
    """``nova status`` with no path: every run and pipeline under the output root, one line per phase,
    the newest alert of each phase that has one below it."""
    if not entries:
        return [f"no runs under {root} (nova train writes them there; or give a run directory)"]
    out = [f"runs under {root}: {len(entries)}, newest first"]
    for path, status in entries:
        if isinstance(status, Exception):
            out.append(f"{path}: unreadable: {getattr(status, 'message', status)}")
            continue
        counts: dict[str, int] = {}
        for p in status.phases:
            counts[p.status] = counts.get(p.status, 0) + 1
        kind = "pipeline" if status.kind == "pipeline" else "run"
        out.append(f"{path} ({kind}: {', '.join(f'{n} {s}' for s, n in counts.items())})")
        width = max(len(p.name) for p in status.phases) if status.phases else 0
        for p in status.phases:
            out.append(summary_line(p, width))
            if p.last_alerts:
                latest = p.last_alerts[-1]
                out.append(f"  {' ' * width}  latest alert: {latest.get('message', latest.get('kind', '?'))}")
    return [line.encode("ascii", "replace").decode("ascii") for line in out]
