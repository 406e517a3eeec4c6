"""The monitor on a GRPO stage: it watches the eval reward (its loss sits near 0 by construction), does not
call a gradient of 0 "nothing is learning" when no group had a reward signal, and status shows the rewards."""

from __future__ import annotations

import json
import time
from pathlib import Path

from nova.config.monitor_schema import MonitorConfig
from nova.monitor.alerts import Watcher
from nova.monitor.render import phase_lines
from nova.monitor.status import phase_status


def test_a_grpo_stage_watches_its_eval_reward_rising_not_its_loss() -> None:
    watcher = Watcher(MonitorConfig(loss_rising_evals=2, early_stopping_patience=2), "grpo", "eval_reward")
    assert not watcher.observe_eval(0, 0.1).alerts
    assert not watcher.observe_eval(10, 0.3).alerts  # a rising reward is progress
    assert not watcher.observe_eval(20, 0.2).alerts
    verdict = watcher.observe_eval(30, 0.1)  # fell twice in a row, and no better than 0.3 for two evals
    kinds = [a.kind for a in verdict.alerts]
    assert kinds == ["eval_reward_falling", "early_stop"] and verdict.stop
    assert "eval_reward fell 2 evals in a row (0.3 -> 0.2 -> 0.1)" in verdict.alerts[0].message
    assert "early stop: eval_reward 0.1 has not improved for 2 evals (best 0.3 at step 10)" in verdict.alerts[1].message


def test_the_loss_watch_is_unchanged_for_other_methods() -> None:
    watcher = Watcher(MonitorConfig(loss_rising_evals=1), "sft")
    watcher.observe_eval(0, 1.0)
    assert [a.kind for a in watcher.observe_eval(10, 1.2).alerts] == ["eval_loss_rising"]


def test_a_zero_gradient_without_reward_signal_is_no_alarm_and_no_baseline() -> None:
    watcher = Watcher(MonitorConfig(grad_norm_baseline_steps=2), "grpo", "eval_reward")
    assert watcher.observe_train(1, 0.0, None, signal=False) == []  # every group scored alike: nothing to learn
    assert watcher.grad_norm_ceiling()[0] is None  # a step without gradient says nothing of "normal"
    watcher.observe_train(2, 0.2, None)
    watcher.observe_train(3, 0.4, None)
    ceiling, _ = watcher.grad_norm_ceiling()
    assert ceiling is not None and abs(ceiling - 10 * 0.3) < 1e-9
    assert [a.kind for a in watcher.observe_train(4, 0.0, None)] == ["grad_norm_low"]  # with a signal it is news


def test_status_shows_a_grpo_stages_rewards(tmp_path: Path) -> None:
    rows = [{"stage": "grpo", "step": s, "time": time.time(), "loss": 0.0, "reward": 0.5 + s / 10,
             "rewards/exact_match/mean": 0.25, "rewards/regex/mean": 0.25 + s / 10, "kl": 0.001 * s,
             "completions/mean_length": 12.0, "frac_reward_zero_std": 0.5} for s in (1, 2)]
    rows.append({"stage": "grpo", "step": 2, "time": time.time(), "eval_reward": 0.7, "eval_loss": 0.0})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ps = phase_status(tmp_path, "rl")
    assert ps.rewards["reward"] == 0.7 and ps.rewards["eval_reward"] == 0.7
    text = "\n".join(phase_lines(ps, time.time()))
    assert "  reward:     0.700 (exact_match 0.250, regex 0.450), eval 0.700" in text
    assert "  grpo:       kl 0.002, completion length 12.0 tokens, groups without signal 50%" in text
    assert text.isascii()
    other = tmp_path / "sft"
    other.mkdir()
    (other / "metrics.jsonl").write_text(json.dumps({"stage": "sft", "step": 1, "loss": 1.0}) + "\n")
    assert phase_status(other, "sft").rewards == {}
    assert "reward:" not in "\n".join(phase_lines(phase_status(other, "sft"), time.time()))


def test_the_plot_draws_a_grpo_reward_panel(tmp_path: Path) -> None:
    from nova.monitor.plot import build_curves, plot_run

    rows = [{"stage": "grpo", "step": s, "loss": 0.0, "reward": s / 4, "learning_rate": 1e-5} for s in (1, 2, 3)]
    rows.append({"stage": "grpo", "step": 3, "eval_loss": 0.0, "eval_reward": 0.6})
    curves = build_curves(rows)
    assert curves.has_grpo and not curves.has_dpo
    assert curves.reward == [(1.0, 0.25), (2.0, 0.5), (3.0, 0.75)] and curves.eval_reward == [(3.0, 0.6)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert plot_run(tmp_path).stat().st_size > 0
