"""Alert rules, kept free of transformers so they can be tested (and reasoned about) on plain numbers.

Repeat rule: an alert fires when its condition starts to hold ("crossing"). While the condition
keeps holding it fires again at most once per ``alert_repeat_steps`` steps; once it clears, the
next crossing fires at once. So a gradient norm of 50 for 1000 steps is 5 lines, not 100.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nova.config.monitor_schema import MonitorConfig
from nova.console import RunLog
from nova.files import GiB
from nova.runs.jsonl import append_jsonl

THROUGHPUT_WINDOW = 20  # tokens/s samples in the running median
THROUGHPUT_MIN_SAMPLES = 3  # samples needed before a drop can be judged


class StepClock:
    """Seconds spent inside optimizer steps (forward, backward, optimizer), nothing else.

    The Trainer calls ``on_step_begin`` before a step's first micro batch and ``on_step_end`` after
    the optimizer step; evaluation, checkpoint saving, logging and plotting all happen outside
    that window. Throughput measured over this clock is the training speed, so a step that also
    evaluated and saved is not a "drop".
    """

    def __init__(self, clock: Any = time.perf_counter) -> None:
        self.clock = clock
        self.seconds = 0.0
        self._began: float | None = None

    def begin(self) -> None:
        self._began = self.clock()

    def end(self) -> None:
        if self._began is not None:
            self.seconds += self.clock() - self._began
            self._began = None


class Throughput:
    """Tokens per second of training between two logs, over a StepClock."""

    def __init__(self, clock: StepClock, tokens_seen: int = 0) -> None:
        self.steps = clock
        self._mark = (clock.seconds, tokens_seen)

    def sample(self, tokens_seen: int) -> float | None:
        previous, self._mark = self._mark, (self.steps.seconds, tokens_seen)
        elapsed, tokens = self.steps.seconds - previous[0], tokens_seen - previous[1]
        return tokens / elapsed if elapsed > 0 and tokens > 0 else None


@dataclass(frozen=True)
class Alert:
    """One alert: a console line and a record in ``alerts.jsonl``."""

    time: float
    step: int
    stage: str
    kind: str
    value: float | None
    threshold: float | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GpuSample:
    """One reading of the training GPU."""

    temperature_c: float | None
    utilization_pct: float | None
    used_bytes: int
    total_bytes: int

    def as_logs(self) -> dict[str, float]:
        """The keys added to the trainer's logs (and so to metrics.jsonl)."""
        out = {"gpu_memory_used": float(self.used_bytes), "gpu_memory_total": float(self.total_bytes)}
        if self.temperature_c is not None:
            out["gpu_temperature_c"] = float(self.temperature_c)
        if self.utilization_pct is not None:
            out["gpu_utilization"] = float(self.utilization_pct)
        return out


@dataclass(frozen=True)
class EvalVerdict:
    alerts: list[Alert]
    stop: bool


class AlertGate:
    """Applies the repeat rule (module docstring) per alert kind."""

    def __init__(self, repeat_steps: int) -> None:
        self.repeat_steps = repeat_steps
        self._fired_at: dict[str, int] = {}

    def allow(self, kind: str, holds: bool, step: int) -> bool:
        """Whether a condition of ``kind`` that does (or does not) hold at ``step`` should fire now."""
        if not holds:
            self._fired_at.pop(kind, None)
            return False
        last = self._fired_at.get(kind)
        if last is None or step - last >= self.repeat_steps or step < last:
            self._fired_at[kind] = step
            return True
        return False


def evals(n: int) -> str:
    return f"{n} eval" if n == 1 else f"{n} evals"


def fmt(value: float) -> str:
    """Short human number: 14.2, 10, 0.001, nan."""
    return f"{value:.4g}" if math.isfinite(value) else str(value)


class Watcher:
    """Turns one stage's log values into alerts and the early-stopping decision.

    ``metric`` is the eval value watched: ``eval_loss`` (lower is better), or for GRPO ``eval_reward``
    (higher is better: GRPO's loss is near 0 by construction and says nothing about progress).
    """

    def __init__(self, config: MonitorConfig, stage: str, metric: str = "eval_loss") -> None:
        self.config = config
        self.stage = stage
        self.metric = metric
        self.higher = metric == "eval_reward"
        self.gate = AlertGate(config.alert_repeat_steps)
        self._grad_baseline: list[float] = []  # the first finite norms: what "normal" is for this stage
        self._tps: deque[float] = deque(maxlen=THROUGHPUT_WINDOW)
        self._tps_seen = 0
        self._tps_low: list[float] = []  # the samples of a drop under way
        self._evals: list[tuple[int, float]] = []
        self._rises = 0
        self._best: tuple[int, float] | None = None
        self._since_best = 0
        self.stopped = False

    def _alert(self, kind: str, holds: bool, step: int, value: float | None, threshold: float | None,
               text: str) -> list[Alert]:
        if not self.gate.allow(kind, holds, step):
            return []
        finite = value if value is None or math.isfinite(value) else None  # JSON has no nan
        return [Alert(time.time(), step, self.stage, kind, finite, threshold,
                      f"{text} at step {step} ({self.stage})")]

    def grad_norm_ceiling(self) -> tuple[float | None, str]:
        """The gradient-norm alert threshold now, and how it was set.

        ``grad_norm_max: auto`` (the default) scales with what this stage's first logged steps show
        (``grad_norm_spike`` x their median), because a fixed number is wrong for some method or
        model: DPO's and full fine-tuning's norms sit well above SFT-LoRA's from the first step.
        Until the baseline is known only a non-finite norm alerts.
        """
        c = self.config
        if c.grad_norm_max != "auto":
            return float(c.grad_norm_max), ""
        if len(self._grad_baseline) < c.grad_norm_baseline_steps:
            return None, ""
        median = statistics.median(self._grad_baseline)
        return c.grad_norm_spike * median, (f" ({fmt(c.grad_norm_spike)}x the median {fmt(median)} of the first "
                                            f"{len(self._grad_baseline)} logged steps)")

    def observe_train(self, step: int, grad_norm: float | None, tokens_per_second: float | None,
                      signal: bool = True) -> list[Alert]:
        """A training log: gradient norm bounds and throughput against its running median. ``signal``
        False (GRPO: every group's completions scored alike) explains a zero gradient: no low alert."""
        out: list[Alert] = []
        c = self.config
        if grad_norm is not None:
            ceiling, why = self.grad_norm_ceiling()
            finite = math.isfinite(grad_norm)
            high = not finite or (ceiling is not None and grad_norm > ceiling)
            shown = fmt(ceiling) if ceiling is not None else "a finite value"
            out += self._alert("grad_norm_high", high, step, grad_norm, ceiling,
                               f"alert: grad_norm {fmt(grad_norm)} > {shown}{why}")
            if finite and grad_norm > 0 and len(self._grad_baseline) < c.grad_norm_baseline_steps:
                self._grad_baseline.append(grad_norm)  # a step without any gradient says nothing of "normal"
            low = finite and signal and grad_norm < c.grad_norm_min
            out += self._alert("grad_norm_low", low, step, grad_norm, c.grad_norm_min,
                               f"alert: grad_norm {fmt(grad_norm)} < {fmt(c.grad_norm_min)} (is anything learning?)")
        if tokens_per_second is not None:
            out += self._throughput(step, tokens_per_second)
        return out

    def replay_grad_norms(self, norms: list[float]) -> None:
        """Rebuild the gradient-norm baseline after a resume (from metrics.jsonl)."""
        for norm in norms:
            if math.isfinite(norm) and norm > 0 and len(self._grad_baseline) < self.config.grad_norm_baseline_steps:
                self._grad_baseline.append(norm)

    def _throughput(self, step: int, tps: float) -> list[Alert]:
        """A drop alerts only when it lasts ``throughput_persist`` logged steps, and only after the stage logged
        ``throughput_min_logs`` (the first sample, start-up, never counts). Low samples are kept out of the
        running median while they last, so a slowdown is measured against the speed before it."""
        c = self.config
        self._tps_seen += 1
        if self._tps_seen == 1:
            return []
        if self._tps_seen <= c.throughput_min_logs or len(self._tps) < THROUGHPUT_MIN_SAMPLES:
            self._tps.append(tps)
            return []
        median = statistics.median(self._tps)
        floor = median * (1 - c.throughput_drop)
        if tps < floor:
            self._tps_low.append(tps)
        else:
            self._tps_low = []
            self._tps.append(tps)
        low = statistics.median(self._tps_low) if self._tps_low else tps
        drop = 1 - low / median if median > 0 else 0.0
        return self._alert("throughput_drop", len(self._tps_low) >= c.throughput_persist, step, round(low, 2),
                           round(floor, 2), f"alert: tokens/s {low:.0f} < {floor:.0f} for {len(self._tps_low)} "
                           f"logged steps ({drop:.0%} below the median {median:.0f})")

    def observe_gpu(self, step: int, gpu: GpuSample) -> list[Alert]:
        """GPU memory (all processes, as NVML sees it) and temperature."""
        out: list[Alert] = []
        c = self.config
        if gpu.total_bytes > 0:
            frac = gpu.used_bytes / gpu.total_bytes
            out += self._alert("gpu_memory", frac > c.memory_fraction, step, round(frac, 4), c.memory_fraction,
                               f"alert: gpu memory {gpu.used_bytes / GiB:.1f} of {gpu.total_bytes / GiB:.1f} GiB "
                               f"({frac:.0%}) > {c.memory_fraction:.0%}")
        if gpu.temperature_c is not None:
            t = gpu.temperature_c
            out += self._alert("gpu_temperature", t > c.temperature_c, step, t, c.temperature_c,
                               f"alert: gpu temperature {t:.0f} C > {fmt(c.temperature_c)} C")
        return out

    @property
    def seen_evals(self) -> bool:
        return bool(self._evals)

    def replay_evals(self, history: list[tuple[int, float]]) -> bool:
        """Rebuild eval state after a resume, silently; True when early stopping was already due."""
        for step, loss in history:
            self.observe_eval(step, loss)
        return self.stopped

    def observe_eval(self, step: int, eval_loss: float) -> EvalVerdict:
        """An evaluation of the watched metric (eval_loss; GRPO: eval_reward): an alert when it gets
        worse several evals in a row, and early stopping when patience is set.

        A non-finite value counts as "did not improve" and as getting worse.
        """
        c = self.config
        prev = self._evals[-1][1] if self._evals else None
        self._evals.append((step, eval_loss))
        worse = prev is not None and (eval_loss < prev if self.higher else eval_loss > prev)
        rose = prev is not None and (not math.isfinite(eval_loss) or worse)
        self._rises = self._rises + 1 if rose else 0
        trail = " -> ".join(fmt(v) for _, v in self._evals[-(self._rises + 1):])
        kind, moved = ("eval_reward_falling", "fell") if self.higher else ("eval_loss_rising", "rose")
        alerts = self._alert(kind, self._rises >= c.loss_rising_evals, step, float(self._rises),
                             float(c.loss_rising_evals),
                             f"alert: {self.metric} {moved} {evals(self._rises)} in a row ({trail})")
        delta = c.early_stopping_min_delta
        improved = math.isfinite(eval_loss) and (self._best is None or (
            eval_loss > self._best[1] + delta if self.higher else eval_loss < self._best[1] - delta))
        if improved:
            self._best, self._since_best = (step, eval_loss), 0
        else:
            self._since_best += 1
        patience = c.early_stopping_patience
        stop = patience is not None and self._since_best >= patience and not self.stopped
        if stop:
            self.stopped = True
            best = f"best {fmt(self._best[1])} at step {self._best[0]}" if self._best else "no finite value"
            alerts.append(Alert(time.time(), step, self.stage, "early_stop", eval_loss, float(patience),
                                f"early stop: {self.metric} {fmt(eval_loss)} has not improved for "
                                f"{evals(self._since_best)} ({best}) at step {step} ({self.stage}); "
                                "stopping this stage"))
        return EvalVerdict(alerts, stop)


def forgetting_alerts(path: Path, log: RunLog, phase: str, table: dict[str, dict[str, Any]],
                      threshold: float) -> list[Alert]:
    """An alert per earlier phase (or retention set) whose holdout loss rose more than ``threshold``."""
    sink = AlertSink(path, log)
    out = []
    for name, row in table.items():
        change = float(row["change"])
        if change > threshold:
            alert = Alert(time.time(), -1, phase, "forgetting", change, threshold,
                          f"alert: forgetting: {name} holdout loss rose {change:.1%} > {threshold:.0%} "
                          f"({fmt(row['eval_loss_before'])} -> {fmt(row['eval_loss_after'])}) after phase {phase}")
            sink.emit(alert)
            out.append(alert)
    return out


class AlertSink:
    """Says each alert on the console and appends it to ``alerts.jsonl``; a full disk never stops training."""

    def __init__(self, path: Path, log: RunLog) -> None:
        self.path = path
        self.log = log
        self._write_failed = False

    def emit(self, alert: Alert) -> None:
        self.log.say(alert.message)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            append_jsonl(self.path, alert.to_dict())
        except OSError as exc:
            if not self._write_failed:
                self._write_failed = True
                self.log.say(f"monitor: cannot write {self.path}: {exc}")
