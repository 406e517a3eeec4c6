"""A run is never silent for long: what it does is said, counted and written to activity.json (what
``nova status`` shows), and Ctrl-C before the first optimizer step stops at once with nothing to save."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import transformers
from test_train import phase_yaml

from nova.config import load_yaml_config
from nova.console import RunLog
from nova.runs.activity import read_activity
from nova.runs.jsonl import read_jsonl
from nova.runs.layout import RunDir
from nova.runs.state import read_pipeline
from nova.train.machinery.resilience import Interrupted
from nova.train.pipeline import run_config


class Watch(transformers.TrainerCallback):
    """Reads activity.json while the trainer evaluates and trains."""

    def __init__(self, run: RunDir, seen: list[dict[str, Any]]) -> None:
        self.run, self.seen = run, seen

    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.seen.append(read_activity(self.run) or {})

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.seen.append(read_activity(self.run) or {})


def test_activity_follows_the_run_and_is_removed_at_the_end(tiny_model_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import nova.model.generate as generate

    run = RunDir(tmp_path / "run")
    seen: list[dict[str, Any]] = []
    real = generate.generate_answers

    def answering(*args: Any, **kwargs: Any) -> list[str]:
        seen.append(read_activity(run) or {})
        return real(*args, **kwargs)

    monkeypatch.setattr(generate, "generate_answers", answering)
    log = tmp_path / "log.txt"
    run_config(load_yaml_config(phase_yaml(tmp_path, tiny_model_dir)), log=RunLog(log),
               extra_callbacks=[Watch(run, seen)])
    kinds = [s.get("what") for s in seen]
    assert "evaluating the holdout" in kinds and "training" in kinds
    evaluating = next(s for s in seen if s.get("what") == "evaluating the holdout")
    assert evaluating["total"] >= 1 and evaluating["stage"] == "sft"
    smoke = [s for s in seen if s.get("what") == "smoke prompts"]
    assert [(s["done"], s["total"]) for s in smoke] == [(0, 2), (1, 2)]  # tuned, then base
    assert not run.activity.exists()  # a finished phase leaves no activity behind
    text = log.read_text()
    assert "[t] smoke prompts: answering 1 with the tuned model, then the base" in text


class InterruptBeforeTheFirstStep(transformers.TrainerCallback):
    """Ctrl-C as the trainer starts, before any optimizer step."""

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.posix
def test_ctrl_c_before_the_first_step_stops_at_once(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = phase_yaml(tmp_path, tiny_model_dir, max_steps="50")
    with pytest.raises(Interrupted) as caught:
        run_config(load_yaml_config(config), log=RunLog(tmp_path / "log.txt"),
                   extra_callbacks=[InterruptBeforeTheFirstStep()])
    assert caught.value.exit_code == 130 and "nothing to save" in caught.value.message
    assert "before the first optimizer step" in caught.value.message
    assert "nova train --config" in (caught.value.hint or "")
    run = RunDir(tmp_path / "run")
    assert not (run.checkpoints("sft")).exists() or not any(run.checkpoints("sft").iterdir())
    assert not [r for r in read_jsonl(run.metrics) if "loss" in r]  # not one training step was taken
    assert read_pipeline(run.path.parent / "pipeline.json") is None  # a single phase has no pipeline.json


@pytest.mark.posix
def test_ctrl_c_during_training_still_saves_a_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> None:
    class InterruptAtStep2(transformers.TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 2:
                os.kill(os.getpid(), signal.SIGINT)

    from nova.errors import TrainingStopped

    config = phase_yaml(tmp_path, tiny_model_dir, max_steps="50")
    with pytest.raises(TrainingStopped) as caught:
        run_config(load_yaml_config(config), log=RunLog(tmp_path / "log.txt"), extra_callbacks=[InterruptAtStep2()])
    assert not isinstance(caught.value, Interrupted) and caught.value.exit_code == 3
    assert (tmp_path / "run" / "checkpoints" / "sft" / "checkpoint-3").is_dir()


class Throttle(transformers.TrainerCallback):
    """From step ``at`` on, each optimizer step takes four times as long as the steps before it did (a throttled
    or contended device), whatever the load on the machine running the test."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.took: list[float] = []
        self.began = 0.0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import statistics
        import time

        if state.global_step >= self.at:
            time.sleep(3 * statistics.median(self.took))
        self.began = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import time

        if state.global_step < self.at:
            self.took.append(time.perf_counter() - self.began)


@pytest.mark.slow
def test_a_throttled_run_raises_the_throughput_alert(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = phase_yaml(tmp_path, tiny_model_dir, max_steps="22")
    text = config.read_text().replace("logging_steps: 2", "logging_steps: 1")
    text = text.replace("eval_steps: 3", "eval_steps: 100")
    config.write_text(text.replace("save_steps: 2", "save_steps: 100").replace('smoke_prompts: ["Salut"]', ""))
    run_config(load_yaml_config(config), log=RunLog(tmp_path / "log.txt"), extra_callbacks=[Throttle(14)])
    alerts = read_jsonl(tmp_path / "run" / "alerts.jsonl")
    drops = [a for a in alerts if a["kind"] == "throughput_drop"]
    assert drops and drops[0]["step"] >= 17, alerts  # 3 slow logged steps after the throttle began at 14
    assert "for 3 logged steps" in drops[0]["message"]
