"""Monitoring: live plots of loss, learning rate and DPO rewards.

Everything here is fed synthetic logs and files: no model is trained, so the file runs in seconds.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from monitor_support import Feeder, dpo_records, sft_records, write_jsonl

from nova.errors import NovaError
from nova.monitor.plot import build_curves, plot_run

PNG = b"\x89PNG\r\n\x1a\n"

# -- plots --------------------------------------------------------------------------------------


def test_plot_is_a_png_that_changes_with_more_metrics(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "metrics.jsonl", sft_records(range(10, 110, 10)))
    path = plot_run(tmp_path)
    assert path == tmp_path / "plots" / "loss.png"
    first = path.read_bytes()
    assert first.startswith(PNG)
    write_jsonl(tmp_path / "metrics.jsonl", sft_records(range(110, 210, 10)) + dpo_records(range(0, 60, 10)),
                mode="a")
    second = plot_run(tmp_path).read_bytes()
    assert second.startswith(PNG) and second != first
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["loss.png"]  # no temporary file left


def test_curves_put_stages_in_sequence_and_find_dpo() -> None:
    records = sft_records(range(10, 210, 10)) + dpo_records(range(0, 60, 10))
    records.append({"stage": "sft", "step": 200, "loss": 99.0})  # not at the end, but a later record of a step wins
    curves = build_curves(records)
    assert curves.stage_starts == [(0.0, "sft"), (200.0, "dpo")]
    assert curves.train_loss[19] == (200.0, 99.0)
    gap = curves.train_loss[20]  # no line from the end of sft to the start of dpo
    assert gap[0] == 200.0 and math.isnan(gap[1]) and curves.train_loss[21] == (200.0, 0.69)
    assert curves.margins[0][0] == 200.0 and curves.eval_accuracies and curves.has_dpo
    assert not build_curves(sft_records(range(10, 50, 10))).has_dpo


def test_plot_without_metrics_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NovaError, match=r"has no metrics\.jsonl"):
        plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(NovaError, match="no metrics yet"):
        plot_run(tmp_path)


def test_callback_redraws_every_plot_every_steps_and_at_the_end(tmp_path: Path) -> None:
    f = Feeder(tmp_path, plot_every=50)
    write_jsonl(tmp_path / "metrics.jsonl", sft_records(range(10, 50, 10)))
    f.train(40)
    f.cb.on_step_begin(None, f.state, f.control)
    assert not (tmp_path / "plots" / "loss.png").exists()
    write_jsonl(tmp_path / "metrics.jsonl", sft_records(range(50, 60, 10)), mode="a")
    f.train(50)
    f.cb.on_step_begin(None, f.state, f.control)
    first = (tmp_path / "plots" / "loss.png").read_bytes()
    write_jsonl(tmp_path / "metrics.jsonl", sft_records(range(60, 80, 10)), mode="a")
    f.cb.on_train_end(None, f.state, f.control)
    assert (tmp_path / "plots" / "loss.png").read_bytes() != first


def test_plot_failure_is_said_once_and_not_raised(tmp_path: Path) -> None:
    f = Feeder(tmp_path / "run")  # no metrics.jsonl: plot_run raises
    f.cb.on_train_end(None, f.state, f.control)
    f.cb.on_train_end(None, f.state, f.control)
    assert len([line for line in f.console() if line.startswith("monitor: cannot draw")]) == 1


