"""A full disk while a checkpoint is saved: one clear line naming where and the fix; the last good checkpoint
is kept and a resume starts from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import transformers
from test_train import phase_yaml

from nova.config import load_yaml_config
from nova.console import RunLog
from nova.errors import NovaError, TrainingStopped
from nova.runs.checkpoints import latest_checkpoint
from nova.train.pipeline import run_config

pytestmark = pytest.mark.trains


class DiskFillsAtStep3(transformers.TrainerCallback):
    """From step 3 on, every torch.save fails the way a full disk makes it fail."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == 3:
            import torch

            def full(*a: Any, **k: Any) -> None:
                raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 5888 vs 5776")

            self.monkeypatch.setattr(torch, "save", full)


def test_a_full_disk_while_saving_a_checkpoint_is_one_clear_line(tiny_model_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    config = phase_yaml(tmp_path, tiny_model_dir, max_steps="6")
    with pytest.raises(NovaError) as caught:
        run_config(load_yaml_config(config), log=RunLog(tmp_path / "log.txt"),
                   extra_callbacks=[DiskFillsAtStep3(monkeypatch)])
    assert not isinstance(caught.value, TrainingStopped)
    checkpoints = tmp_path / "run" / "checkpoints" / "sft"
    assert f"[t/sft] the disk is full: cannot write {checkpoints}" in caught.value.message
    assert "free space" in (caught.value.hint or "") and "nova train --config" in (caught.value.hint or "")
    kept = latest_checkpoint(checkpoints)
    assert kept is not None and kept.name == "checkpoint-2"  # the last good one, ready for a resume
