"""A stop request after the last step stops the run: what is saved is said, and how to finish; and the phase's
time counts its whole finish (smoke prompts included), not only its training."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import transformers
from test_train import phase_yaml

from nova.config import load_yaml_config
from nova.console import RunLog
from nova.errors import TrainingStopped
from nova.runs.layout import RunDir
from nova.train.machinery.resilience import Interrupted
from nova.train.pipeline import run_config

pytestmark = [pytest.mark.trains, pytest.mark.posix]


class TermDuringTheLastStep(transformers.TrainerCallback):
    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == state.max_steps - 1:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_stop_during_the_last_step_saves_the_stage_and_stops(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = phase_yaml(tmp_path, tiny_model_dir, max_steps="3")
    with pytest.raises(TrainingStopped) as caught:
        run_config(load_yaml_config(config), log=RunLog(tmp_path / "log.txt"),
                   extra_callbacks=[TermDuringTheLastStep()])
    run = RunDir(tmp_path / "run")
    assert "after the last step of t/sft" in caught.value.message and "skipped" in caught.value.message
    assert "nova train --config" in (caught.value.hint or "")
    assert run.stage_is_done("sft") and not run.complete_marker.exists()


def test_a_stop_during_the_smoke_prompts_says_the_adapter_is_saved(tiny_model_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import nova.model.generate as generate

    def answering(*args: Any, **kwargs: Any) -> list[str]:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler raises here
        raise AssertionError("the stop was ignored")

    monkeypatch.setattr(generate, "generate_answers", answering)
    with pytest.raises(Interrupted) as caught:
        run_config(load_yaml_config(phase_yaml(tmp_path, tiny_model_dir, max_steps="2")),
                   log=RunLog(tmp_path / "log.txt"))
    run = RunDir(tmp_path / "run")
    assert "after training (smoke prompts)" in caught.value.message
    assert f"the adapter is saved in {run.adapter}" in caught.value.message
    assert "nothing is trained again" in (caught.value.hint or "")
    assert (run.adapter / "adapter_config.json").is_file() and not run.complete_marker.exists()


def test_the_phase_time_counts_its_finish(tiny_model_dir: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import nova.model.generate as generate

    real = generate.generate_answers

    def slow(*args: Any, **kwargs: Any) -> list[str]:
        time.sleep(3)
        return real(*args, **kwargs)

    monkeypatch.setattr(generate, "generate_answers", slow)
    began = time.time()
    [result] = run_config(load_yaml_config(phase_yaml(tmp_path, tiny_model_dir, max_steps="2")),
                          log=RunLog(tmp_path / "log.txt"))
    took = time.time() - began
    recorded = json.loads(RunDir(tmp_path / "run").complete_marker.read_text())["seconds"]
    trained = sum(s["seconds"] for s in json.loads(RunDir(tmp_path / "run").complete_marker.read_text())["stages"])
    assert recorded >= trained + 6 - 0.5  # two smoke answers (tuned, base) of 3 s each
    assert took - 10 < result.seconds <= took  # the real time (the model loads inside the phase as well)
