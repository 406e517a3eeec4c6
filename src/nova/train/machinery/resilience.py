"""Runs that survive: sealed checkpoints, exact resume, clean stops on signals, NaN and OOM handling.

- A checkpoint is written into ``.tmp-checkpoint-N``, sealed with ``nova_checkpoint.json`` and
  renamed to ``checkpoint-N`` only when complete (the format and its checks: nova.runs.checkpoints).
- The HF Trainer's own PEFT resume switches a stacked composition down to one adapter (it
  activates only the first active adapter), so nova loads the trained adapter's weights itself.
- SIGINT / SIGTERM (Ctrl-C; on Windows also Ctrl-Break, SIGBREAK) during training ask for a checkpoint
  at the end of the current step and a clean exit (code 3); before the first optimizer step and after
  the last there is nothing to save, so they stop at once (code 130); a second signal exits at once.
- A non-finite loss stops the run before the optimizer step can spread it into the weights;
  the last good checkpoint stays as it was.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nova.errors import TrainingStopped
from nova.files import remove_tree, replace_path
from nova.lazy import require
from nova.runs.checkpoints import TMP_PREFIX, TRAINER_STATE, checkpoint_name, rotate, seal
from nova.system import stop_signals


class NonFiniteLoss(TrainingStopped):
    """The loss became NaN or infinite."""


class NovaTrainerMixin:
    """Overrides of the HF Trainer shared by nova's SFT and DPO trainers (transformers 5.x)."""

    nova_stop: StopRequest | None = None
    nova_fingerprint: dict[str, Any] | None = None  # sealed into every checkpoint (nova.runs.fingerprint)
    nova_lr_override: float | None = None  # --resume-with-changes: the new peak learning rate

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """Like Trainer._save_checkpoint, but into a temp dir, sealed, then renamed.

        Every rank takes part (the HF helpers decide who writes what: rank 0 the adapter, optimizer
        and state, each rank its RNG state; FSDP and DeepSpeed gather); rank 0 alone makes the
        temporary directory, seals it and renames it, between barriers.
        """
        run_dir = Path(self._get_output_dir(trial=trial))  # type: ignore[attr-defined]
        step = self.state.global_step  # type: ignore[attr-defined]
        final = run_dir / checkpoint_name(step)
        tmp = run_dir / f"{TMP_PREFIX}{step}"
        main = self.is_world_process_zero()  # type: ignore[attr-defined]
        wait = self.accelerator.wait_for_everyone  # type: ignore[attr-defined]
        if main:
            remove_tree(tmp)
            tmp.mkdir(parents=True)
        wait()
        try:
            self._write_checkpoint_files(tmp)
            wait()
            if main:
                seal(tmp, step, self.nova_fingerprint, self.args.world_size)  # type: ignore[attr-defined]
                replace_path(tmp, final)  # moves an existing checkpoint-N aside first (Windows cannot rename onto it)
        finally:
            if main:
                remove_tree(tmp)  # a failed save leaves no temporary directory
        wait()
        if main:
            rotate(run_dir, self.args.save_total_limit or 1)  # type: ignore[attr-defined]

    def _write_checkpoint_files(self, tmp: Path) -> None:
        from transformers.trainer_callback import ExportableState

        self.store_flos()  # type: ignore[attr-defined]
        self.save_model(str(tmp), _internal_call=True)  # type: ignore[attr-defined]
        self._save_optimizer_and_scheduler(str(tmp))  # type: ignore[attr-defined]
        self._save_scaler(str(tmp))  # type: ignore[attr-defined]
        self._save_rng_state(str(tmp))  # type: ignore[attr-defined]
        callbacks = [*self.callback_handler.callbacks, self.control]  # type: ignore[attr-defined]
        for cb in [c for c in callbacks if isinstance(c, ExportableState)]:
            self.state.stateful_callbacks[cb.__class__.__name__] = cb.state()  # type: ignore[attr-defined]
        if self.is_world_process_zero():  # type: ignore[attr-defined]
            self.state.save_to_json(str(tmp / TRAINER_STATE))  # type: ignore[attr-defined]

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        """Load only the trained adapter's weights, keeping the stacked composition active (a full
        fine-tuning checkpoint: every weight)."""
        from nova.model.trained import restore

        restore(model or self.model, Path(resume_from_checkpoint))  # type: ignore[attr-defined]

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """The restored scheduler carries the old peak rate; with --resume-with-changes put in the new
        one, so the rest of the schedule (and the next step) uses it for real."""
        super()._load_optimizer_and_scheduler(checkpoint)  # type: ignore[misc]
        if checkpoint is not None and self.nova_lr_override is not None:
            apply_peak_lr(self.optimizer, self.lr_scheduler, self.nova_lr_override)  # type: ignore[attr-defined]

    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
        loss = super().training_step(model, inputs, num_items_in_batch)  # type: ignore[misc]
        torch = require("torch")
        if not bool(torch.isfinite(loss).all()):
            step = self.state.global_step + 1  # type: ignore[attr-defined]
            raise NonFiniteLoss(f"the loss became {float(loss)} at step {step}: training stopped before the "
                                "optimizer could write it into the weights",
                                hint="check the data, or resume from the last checkpoint with a lower rate: "
                                "--set training.learning_rate=... --resume-with-changes")
        return loss


def apply_peak_lr(optimizer: Any, scheduler: Any, lr: float) -> None:
    """Give a restored LambdaLR-style schedule a new peak rate at its current step."""
    scheduler.base_lrs = [lr for _ in scheduler.base_lrs]
    step = scheduler.last_epoch
    lambdas = getattr(scheduler, "lr_lambdas", None) or [lambda _: 1.0] * len(scheduler.base_lrs)
    for group, fn in zip(optimizer.param_groups, lambdas, strict=False):
        group["initial_lr"] = lr
        group["lr"] = lr * fn(step)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


@dataclass
class StopRequest:
    """Set by a signal handler; read at the end of each training step.

    ``saving`` is True while optimizer steps run and one has finished: only then is there something a
    checkpoint at the end of the step would keep. Before it (loading, tokenizing, the first evaluation,
    the first step) and after training (saving, smoke prompts, scoring holdouts) a signal stops at once.
    """

    signal_name: str | None = None
    at_step: int | None = None
    hard_exit: bool = True
    saving: bool = False
    trained: str | None = None  # after the last step: what is saved already (a stop then says so, and how to finish)

    @property
    def requested(self) -> bool:
        return self.signal_name is not None


def stop_callback(request: StopRequest) -> Any:
    """A TrainerCallback that saves a checkpoint and stops training when a stop was requested.

    In a distributed run the request is shared at every step end (one tiny all-reduce): a signal
    that reached one rank stops all of them at the same step, with one checkpoint.
    """
    transformers = require("transformers")
    from nova.train.machinery import distributed

    ranks = distributed.current()

    class StopOnSignal(transformers.TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            request.saving = True  # from here on a signal saves a checkpoint at the end of the step
            if distributed.any_rank(ranks, request.requested):
                request.signal_name = request.signal_name or "a signal on another rank"
                request.at_step = state.global_step
                control.should_save = True
                control.should_training_stop = True
            return control

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            request.saving = False
            return control

    return StopOnSignal()


class Interrupted(TrainingStopped):
    """A stop signal while no training step was under way: nothing to save, so nova stopped at once."""

    exit_code = 130  # the shell's code for Ctrl-C; 3 is a stop that saved a checkpoint


@contextmanager
def signal_handling(request: StopRequest, say: Any, log: Any = None, rerun_hint: str = "") -> Iterator[StopRequest]:
    """SIGINT/SIGTERM (and Ctrl-Break, SIGBREAK, on Windows): during training the first one asks for a
    checkpoint at the end of the step and a clean stop; before the first step and after the last (nothing a
    checkpoint would keep) it stops at once, raising Interrupted; a second one exits without a word more."""
    names = stop_signals()

    def handler(signum: int, frame: Any) -> None:
        name = names.get(signum, f"signal {signum}")
        if request.requested:
            say(f"{name} again: exiting now without saving")
            os._exit(128 + signum)
        request.signal_name = name
        if not request.saving:
            doing = log.doing[-1].what if log is not None and log.doing else None
            if request.trained is not None:
                raise Interrupted(f"{name} received after training{f' ({doing})' if doing else ''}: stopped; "
                                  f"{request.trained}; skipped: the rest of the phase's finish (forgetting table, "
                                  "smoke prompts, COMPLETE)", hint="to finish the phase (nothing is trained again)"
                                  + (f": {rerun_hint}" if rerun_hint else ": run nova train again"))
            when = f" ({doing})" if doing and doing != "training" else " (before the first optimizer step)" \
                if doing else ""
            # tokenizing writes its cache shard by shard (nova.data.shards): what is finished is on disk already
            saved = "the finished shards of the tokenized data are kept" if doing == "tokenizing" else "nothing to save"
            raise Interrupted(f"{name} received with no training step under way{when}: {saved}, stopped at once",
                              hint=f"to start again from what is saved: {rerun_hint}" if rerun_hint else None)
        say(f"{name} received: saving a checkpoint at the end of this step, then stopping "
            "(send it again to quit at once)")

    previous = {s: signal.getsignal(s) for s in names}
    try:
        for s in previous:
            signal.signal(s, handler)
    except ValueError:  # not the main thread (e.g. a test runner thread): run without handlers
        previous = {}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@dataclass
class Recovery:
    """What OOM recovery changed, for the console and <run>/recoveries.jsonl."""

    step: int
    before: tuple[int, int, bool]
    after: tuple[int, int, bool]
    checkpoint: str | None
    message: str = field(init=False)

    def __post_init__(self) -> None:
        (mb0, ga0, gc0), (mb1, ga1, gc1) = self.before, self.after
        parts = [f"micro batch {mb0} -> {mb1}", f"grad accumulation {ga0} -> {ga1}"]
        if gc1 and not gc0:
            parts.append("gradient checkpointing on")
        where = f"resuming from {Path(self.checkpoint).name}" if self.checkpoint else "restarting the stage"
        self.message = f"OOM at step {self.step}: {', '.join(parts)}; {where}"


def smaller_batch(training: Any, minimum: int = 1) -> Any | None:
    """Halve the micro batch (not below ``minimum``: KTO's KL term needs two replies in one) and raise
    accumulation to keep the effective batch; None when it cannot get smaller."""
    micro = max(minimum, training.micro_batch_size // 2)
    if micro >= training.micro_batch_size:
        return None
    effective = training.micro_batch_size * training.gradient_accumulation_steps
    return training.changed(micro_batch_size=micro, gradient_accumulation_steps=max(1, effective // micro),
                            gradient_checkpointing=True)


def is_oom(exc: BaseException) -> bool:
    torch = require("torch")
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def free_memory() -> None:
    import gc

    gc.collect()
    torch = require("torch")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
