"""MonitorCallback: GPU readings into the logs, alerts, early stopping on eval loss, live plots.

Nothing here may fail training: NVML errors switch GPU readings off, plot errors are said once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nova.config.monitor_schema import MonitorConfig
from nova.console import RunLog, Task
from nova.lazy import require
from nova.methods import method_spec
from nova.monitor.alerts import Alert, AlertSink, GpuSample, StepClock, Throughput, Watcher
from nova.runs.activity import TRAINING
from nova.runs.jsonl import number, read_jsonl
from nova.runs.layout import RunDir

transformers = require("transformers")


class MonitorCallback(transformers.TrainerCallback):
    """Watches one stage. Register it before MetricsCallback so the GPU keys it adds to ``logs``
    are written to metrics.jsonl.

    Throughput is measured on training steps only (nova.monitor.alerts.StepClock): evaluation,
    checkpoint saving and plotting between steps do not count, so a step that also evaluated and
    saved is not a "drop". The value goes into the logs, so metrics.jsonl and ``nova status``
    show the same number the alert judged.
    """

    def __init__(self, run_dir: Path, config: MonitorConfig, log: RunLog, stage: str,
                 gpu_index: int | None, method: str = "sft") -> None:
        self.run_dir = Path(run_dir)
        self.config = config
        self.log = log
        self.stage = stage
        self.method = method
        self.spec = method_spec(method)
        self.eval_key = self.spec.monitor_metric  # GRPO: its holdout reward (its loss sits near 0 whatever it learns)
        self.watcher = Watcher(config, stage, self.eval_key)
        self.sink = AlertSink(RunDir(self.run_dir).alerts, log)
        self.sampler: Any = None
        if gpu_index is not None:
            from nova.monitor.gpu import GpuSampler

            self.sampler = GpuSampler(gpu_index)
        self.clock: Callable[[], float] = time.perf_counter  # replaceable in tests
        self.steps = StepClock(self.clock)
        self.throughput = Throughput(self.steps)
        self._last_plot_step = 0
        self._plot_due = False
        self._plot_failed = False
        self._training: Task | None = None  # the activity while optimizer steps run (nova status: step, ETA)
        self._evaluating: Task | None = None  # an evaluation pass under way, counted per batch

    # -- events -------------------------------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self._training = Task(TRAINING, log=self.log, quiet=True, extra={"stage": self.stage}).__enter__()
        self.steps = StepClock(self.clock)
        self.throughput = Throughput(self.steps, int(state.num_input_tokens_seen or 0))
        self._last_plot_step = state.global_step
        if state.global_step > 0 and not self.watcher.seen_evals:
            self._replay(state, control)

    def _replay(self, state: Any, control: Any) -> None:
        """A resumed stage: recover the eval history from metrics.jsonl so early-stopping patience
        and the rising-loss count carry over the interruption instead of starting again."""
        mine = [r for r in read_jsonl(RunDir(self.run_dir).metrics) if r.get("stage") == self.stage
                and isinstance(r.get("step"), int) and r["step"] <= state.global_step]
        self.watcher.replay_grad_norms([v for r in mine if (v := number(r.get("grad_norm"))) is not None])
        history = [(int(r["step"]), float(v)) for r in mine if (v := number(r.get(self.eval_key))) is not None]
        if self.watcher.replay_evals(history):
            self.log.say(f"early stop: {self.eval_key} had already stopped improving before the resume at step "
                         f"{state.global_step} ({self.stage}); stopping this stage")
            control.should_training_stop = True

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> None:
        if not logs or not state.is_world_process_zero:
            return
        step = state.global_step
        alerts: list[Alert] = []
        gpu = self._sample_gpu()
        if gpu is not None:
            logs.update(gpu.as_logs())
            alerts += self.watcher.observe_gpu(step, gpu)
        if "loss" in logs:
            tps = self.throughput.sample(int(state.num_input_tokens_seen or 0))
            if tps is not None:
                logs["tokens_per_second"] = round(tps, 2)
            signal = number(logs.get("frac_reward_zero_std")) != 1.0  # GRPO: 1.0 is no reward signal at all
            # a generating method's tokens/s follow its answers' lengths (a batch decodes as long as its
            # longest answer): logged, but no drop alert
            judged = None if self.spec.generates else tps
            alerts += self.watcher.observe_train(step, number(logs.get("grad_norm")), judged, signal)
        eval_loss = number(logs.get(self.eval_key))
        if eval_loss is not None:
            verdict = self.watcher.observe_eval(step, eval_loss)
            alerts += verdict.alerts
            if verdict.stop:
                control.should_training_stop = True
        for alert in alerts:
            self.sink.emit(alert)
        if step - self._last_plot_step >= self.config.plot_every:
            self._plot_due = True  # drawn at the next step, once MetricsCallback has written this log

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._plot_due and state.is_world_process_zero:
            self._plot_due = False
            self._last_plot_step = state.global_step
            self.draw()
        self.steps.begin()  # after the plot: drawing is not training time

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.steps.end()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self._plot_due = False
            self.draw()
        if self._training is not None:
            self._training.__exit__()
            self._training = None

    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """One batch of an evaluation: said as "evaluating 3/10" (a bar on a terminal, the activity record)."""
        if not state.is_world_process_zero:
            return
        if self._evaluating is None:
            loader = kwargs.get("eval_dataloader")
            try:
                total = len(loader) if loader is not None else None
            except TypeError:  # an iterable dataset has no length
                total = None
            self._evaluating = Task("evaluating the holdout", total, log=self.log, quiet=True,
                                    extra={"stage": self.stage}).__enter__()
        self._evaluating.advance()

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._evaluating is not None:
            self._evaluating.__exit__()
            self._evaluating = None

    # -- helpers ------------------------------------------------------------------------------

    def draw(self) -> Path | None:
        """Redraw plots/loss.png; a failure is said once and never raised."""
        from nova.monitor.plot import plot_run

        try:
            return plot_run(self.run_dir)
        except Exception as exc:
            if not self._plot_failed:
                self._plot_failed = True
                self.log.say(f"monitor: cannot draw {self.run_dir / 'plots' / 'loss.png'}: {exc}")
            return None

    def _sample_gpu(self) -> GpuSample | None:
        if self.sampler is None:
            return None
        try:
            sample: GpuSample | None = self.sampler.sample()
        except Exception:
            self.sampler = None
            return None
        return sample
