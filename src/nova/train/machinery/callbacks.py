"""Trainer callbacks: metrics.jsonl (one JSON object per logged step) and an ASCII progress bar."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from nova.lazy import require

transformers = require("transformers")


def memory_in_use() -> dict[str, float]:
    """GPU memory allocated/reserved (bytes) on CUDA, else this process's resident set size."""
    torch = require("torch")
    if torch.cuda.is_available():
        return {"memory_allocated": float(torch.cuda.memory_allocated()),
                "memory_reserved": float(torch.cuda.memory_reserved())}
    from nova.system import rss_bytes

    rss = rss_bytes()  # psutil: the same figure on Linux, macOS (mps shares it) and Windows
    return {} if rss is None else {"memory_rss": float(rss)}


def _memory_of_every_rank() -> list[float] | None:
    """Each rank's memory in use (GPU reserved, else RSS), gathered on every rank; None in one process."""
    torch = require("torch")
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    mine = memory_in_use()
    value = mine.get("memory_reserved", mine.get("memory_rss", 0.0))
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, value)
    return [float(v) for v in gathered]


class MetricsCallback(transformers.TrainerCallback):
    """Append every log event to ``metrics.jsonl`` with step, epoch, throughput and memory.

    Tokens per second counts non-padding input tokens between two logs, over wall time.
    """

    def __init__(self, path: Path, stage: str) -> None:
        self.path = path
        self.stage = stage
        self._last_time: float | None = None
        self._last_tokens = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # A resumed Trainer takes logging/eval/save steps from the checkpoint's trainer_state.json, not from
        # the arguments: apply the config's cadence again, so a resume logs, evaluates and saves as it says.
        state.compute_steps(args, state.max_steps)
        self._last_time = time.perf_counter()
        self._last_tokens = state.num_input_tokens_seen

    def _restart_clock(self, state: Any) -> None:
        """Evaluation and checkpoint pauses are not training time: restart the throughput clock after them."""
        self._last_time = time.perf_counter()
        self._last_tokens = state.num_input_tokens_seen

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._restart_clock(state)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._restart_clock(state)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not logs:
            return
        per_rank = _memory_of_every_rank()  # every rank takes part; rank 0 writes
        if not state.is_world_process_zero:
            return
        record: dict[str, Any] = {"stage": self.stage, "step": state.global_step,
                                  "epoch": round(state.epoch or 0.0, 4), "time": time.time()}
        record.update({k: v for k, v in logs.items() if isinstance(v, int | float)})
        now = time.perf_counter()
        if "loss" in logs and "tokens_per_second" in logs:  # measured on training steps (MonitorCallback)
            self._last_time, self._last_tokens = now, state.num_input_tokens_seen
        elif "loss" in logs and self._last_time is not None:
            seen = state.num_input_tokens_seen
            elapsed = now - self._last_time
            if elapsed > 0 and seen > self._last_tokens:
                record["tokens_per_second"] = round((seen - self._last_tokens) / elapsed, 2)
            self._last_time, self._last_tokens = now, seen
        record.update(memory_in_use())
        if per_rank is not None:
            record["memory_per_rank"] = per_rank
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


class ProgressCallback(transformers.TrainerCallback):
    """An ASCII progress bar with loss, learning rate and ETA (replaces the Trainer's dict printing)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:  # rank 0 shows progress for all
            return
        tqdm = require("tqdm.auto").tqdm
        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.label, ascii=True,
                        dynamic_ncols=True, mininterval=1.0, disable=False)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if self.bar is None or not logs:
            return
        post = {}
        for key, short in (("loss", "loss"), ("eval_loss", "eval"), ("learning_rate", "lr"),
                           ("rewards/margins", "margin"), ("reward", "reward")):
            if key in logs:
                post[short] = f"{logs[key]:.3g}" if key == "learning_rate" else f"{logs[key]:.4f}"
        if post:
            self.bar.set_postfix(post, refresh=False)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
