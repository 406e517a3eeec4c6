"""Synthetic runs and log feeders for the monitor tests: no model is trained."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

from nova.config.monitor_schema import MonitorConfig
from nova.console import RunLog
from nova.runs.jsonl import read_jsonl

PNG = b"\x89PNG\r\n\x1a\n"

# -- helpers ------------------------------------------------------------------------------------


class Clock:
    """A fake perf_counter the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Feeder:
    """Drives a MonitorCallback the way the Trainer does: on_log with a state and a control."""

    def __init__(self, run_dir: Path, stage: str = "sft", gpu_index: int | None = None, **monitor: Any) -> None:
        import transformers

        from nova.monitor import MonitorCallback

        self.transformers = transformers
        self.out = io.StringIO()
        self.run_dir = run_dir
        self.cb = MonitorCallback(run_dir, MonitorConfig(**monitor), RunLog(stream=self.out), stage, gpu_index)
        self.clock = Clock()
        self.cb.clock = self.clock
        self.state = transformers.TrainerState()
        self.control = transformers.TrainerControl()
        self.cb.on_train_begin(None, self.state, self.control)

    def log(self, step: int, **logs: Any) -> dict[str, Any]:
        self.state.global_step = step
        self.cb.on_log(None, self.state, self.control, logs=logs)
        return logs

    def train(self, step: int, grad_norm: float = 1.0, tps: float | None = None, loss: float = 1.0) -> dict[str, Any]:
        """A training log; with ``tps`` one optimizer step runs first (on_step_begin, one second on the
        fake clock, on_step_end, as the Trainer calls them) and the tokens seen grow by tps."""
        if tps is not None:
            self.cb.on_step_begin(None, self.state, self.control)
            self.clock.now += 1.0
            self.state.num_input_tokens_seen += int(tps)
            self.cb.on_step_end(None, self.state, self.control)
        return self.log(step, loss=loss, grad_norm=grad_norm, learning_rate=1e-4)

    def alerts(self) -> list[dict[str, Any]]:
        return read_jsonl(self.run_dir / "alerts.jsonl")

    def console(self) -> list[str]:
        return self.out.getvalue().splitlines()


def write_jsonl(path: Path, records: list[dict[str, Any]], mode: str = "w") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open(mode, encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")


def sft_records(steps: range, t0: float = 1_000_000.0, seconds_per_step: float = 2.0,
                stage: str = "sft") -> list[dict[str, Any]]:
    out = []
    for s in steps:
        out.append({"stage": stage, "step": s, "epoch": s / 100, "time": t0 + s * seconds_per_step,
                    "loss": 2.0 / (1 + s / 50), "learning_rate": 2e-4 * (1 - s / 400), "grad_norm": 0.8,
                    "tokens_per_second": 1500.0 + s})
        if s % 50 == 0:
            out.append({"stage": stage, "step": s, "epoch": s / 100, "time": t0 + s * seconds_per_step + 1,
                        "eval_loss": 2.1 / (1 + s / 60)})
    return out


def dpo_records(steps: range, t0: float = 2_000_000.0) -> list[dict[str, Any]]:
    return [{"stage": "dpo", "step": s, "time": t0 + s, "loss": 0.69 - s / 1000, "learning_rate": 5e-6,
             "rewards/margins": s / 100, "rewards/accuracies": min(1.0, 0.5 + s / 200),
             **({"eval_loss": 0.6, "eval_rewards/margins": s / 90, "eval_rewards/accuracies": 0.7}
                if s % 20 == 0 else {})} for s in steps]


def write_pid(run_dir: Path, pid: int, host: str | None = None) -> None:
    import socket

    (run_dir / "nova.pid").write_text(json.dumps({"pid": pid, "started": time.time(),
                                                   "host": host or socket.gethostname()}))


def make_run(run_dir: Path, *, last_step: int = 120, max_steps: int = 300, checkpoint: int | None = 100,
             config: str | None = None) -> Path:
    """A run directory as nova leaves it mid-training (2 seconds per step)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(config or f"name: {run_dir.name}\nmodel: {{base: some/model}}\n"
                                         f"method: sft\ntraining:\n  max_steps: {max_steps}\n")
    write_jsonl(run_dir / "metrics.jsonl", sft_records(range(10, last_step + 1, 10)))
    if checkpoint is not None:
        for step, sealed in ((checkpoint, True), (checkpoint + 10, False)):  # the second: killed while saving
            ck = run_dir / "checkpoints" / "sft" / f"checkpoint-{step}"
            ck.mkdir(parents=True)
            for name in ("optimizer.pt", "scheduler.pt"):
                (ck / name).write_bytes(b"x")
            (ck / "adapter_model.safetensors").write_bytes((2).to_bytes(8, "little") + b"{}")  # an empty tensor file
            (ck / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": max_steps}))
            if sealed:
                (ck / "nova_checkpoint.json").write_text(json.dumps({"step": step}))
    return run_dir


