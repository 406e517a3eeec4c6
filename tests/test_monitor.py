"""Monitoring: alerts once per crossing, early stopping, live plots, and ``nova status`` on synthetic runs.

Everything here is fed synthetic logs and files: no model is trained, so the file runs in seconds.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from nova.config.monitor_schema import MonitorConfig
from nova.console import RunLog
from nova.errors import NovaError
from nova.monitor.alerts import AlertGate, GpuSample, Watcher
from nova.monitor.files import read_jsonl
from nova.monitor.plot import build_curves, plot_run
from nova.monitor.status import pid_alive, read_status, status_lines

PNG = b"\x89PNG\r\n\x1a\n"
GiB = 1024**3


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
        """A training log; with ``tps`` the fake clock advances one second and the tokens seen by tps."""
        if tps is not None:
            self.clock.now += 1.0
            self.state.num_input_tokens_seen += int(tps)
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


def spawn(*argv: str) -> subprocess.Popen[bytes]:
    """A sleeping Python process whose command line carries ``argv`` (e.g. 'nova').

    Right after a vfork+exec the kernel can show an empty /proc/<pid>/cmdline for a moment
    (as it does for a zombie), so wait until the new command line is visible.
    """
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *argv])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not Path(f"/proc/{proc.pid}/cmdline").read_bytes():
        time.sleep(0.01)
    return proc


@pytest.fixture
def nova_process() -> Any:
    proc = spawn("nova", "train")
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def other_process() -> Any:
    proc = spawn("not-the-trainer")
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def dead_pid() -> int:
    proc = spawn()
    proc.kill()
    proc.wait()
    return proc.pid


def write_pid(run_dir: Path, pid: int, host: str | None = None) -> None:
    import socket

    (run_dir / "nova.pid").write_text(json.dumps({"pid": pid, "started": time.time(),
                                                   "host": host or socket.gethostname()}))


def make_run(run_dir: Path, *, last_step: int = 120, max_steps: int = 300, checkpoint: int | None = 100,
             config: str | None = None) -> Path:
    """A run directory as nova leaves it mid-training (2 seconds per step)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(config or f"name: {run_dir.name}\nmethod: sft\ntraining:\n"
                                         f"  max_steps: {max_steps}\n")
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


# -- alert rules --------------------------------------------------------------------------------


def test_gate_fires_on_crossing_then_after_clearing_or_repeat_steps() -> None:
    gate = AlertGate(repeat_steps=100)
    fired = [step for step, holds in [(10, True), (20, True), (30, False), (40, True), (130, True), (140, True),
                                      (150, True)] if gate.allow("k", holds, step)]
    assert fired == [10, 40, 140]


def test_grad_norm_alert_fires_once_per_crossing(tmp_path: Path) -> None:
    f = Feeder(tmp_path, grad_norm_max=10, alert_repeat_steps=100)
    for step, norm in [(10, 1.0), (120, 14.2), (130, 15.0), (140, 20.0), (150, 1.0), (160, 11.0), (170, 12.0)]:
        f.train(step, grad_norm=norm)
    alerts = f.alerts()
    assert [(a["kind"], a["step"]) for a in alerts] == [("grad_norm_high", 120), ("grad_norm_high", 160)]
    first = alerts[0]
    assert first["message"] == "alert: grad_norm 14.2 > 10 at step 120 (sft)"
    assert first["value"] == pytest.approx(14.2) and first["threshold"] == 10 and first["stage"] == "sft"
    assert set(first) == {"time", "step", "stage", "kind", "value", "threshold", "message"}
    assert f.console() == [a["message"] for a in alerts]
    assert all(line.isascii() for line in f.console())


def test_grad_norm_repeats_after_repeat_steps_and_low_and_nan(tmp_path: Path) -> None:
    f = Feeder(tmp_path, grad_norm_max=10, grad_norm_min=0.01, alert_repeat_steps=50)
    for step in range(10, 121, 10):
        f.train(step, grad_norm=30.0)
    f.train(130, grad_norm=0.001)
    f.train(140, grad_norm=float("nan"))
    kinds = [(a["kind"], a["step"]) for a in f.alerts()]
    assert kinds == [("grad_norm_high", 10), ("grad_norm_high", 60), ("grad_norm_high", 110),
                     ("grad_norm_low", 130), ("grad_norm_high", 140)]
    nan_alert = f.alerts()[-1]
    assert nan_alert["value"] is None and "nan" in nan_alert["message"]


def test_throughput_drop_against_running_median(tmp_path: Path) -> None:
    f = Feeder(tmp_path, throughput_drop=0.2)
    f.train(1, tps=100.0)  # start-up sample: ignored
    for step in range(10, 60, 10):
        f.train(step, tps=1000.0)
    f.train(60, tps=700.0)
    f.train(70, tps=650.0)  # still low: no second alert
    f.train(80, tps=1000.0)
    alerts = f.alerts()
    assert [(a["kind"], a["step"]) for a in alerts] == [("throughput_drop", 60)]
    assert alerts[0]["value"] == pytest.approx(700) and alerts[0]["threshold"] == pytest.approx(800)
    assert "30% below the median 1000" in alerts[0]["message"]


def test_eval_and_save_pauses_are_not_throughput_drops(tmp_path: Path) -> None:
    f = Feeder(tmp_path)
    f.train(1, tps=1000.0)
    for step in range(10, 60, 10):
        f.train(step, tps=1000.0)
    f.clock.now += 60  # a long evaluation, then a checkpoint save
    f.cb.on_evaluate(None, f.state, f.control)
    f.clock.now += 30
    f.cb.on_save(None, f.state, f.control)
    f.train(60, tps=1000.0)
    assert f.alerts() == []


def test_too_few_samples_never_alert(tmp_path: Path) -> None:
    w = Watcher(MonitorConfig(), "sft")
    assert w.observe_train(1, None, 5000.0) == []
    assert w.observe_train(2, None, 1000.0) == []
    assert w.observe_train(3, None, 10.0) == []


def test_eval_loss_rising_alert(tmp_path: Path) -> None:
    f = Feeder(tmp_path, loss_rising_evals=3, alert_repeat_steps=1000)
    for step, loss in [(100, 1.0), (200, 1.1), (300, 1.2), (400, 1.3), (500, 1.4), (600, 0.9), (700, 1.0)]:
        f.log(step, eval_loss=loss)
    alerts = f.alerts()
    assert [(a["kind"], a["step"]) for a in alerts] == [("eval_loss_rising", 400)]
    assert alerts[0]["message"] == "alert: eval_loss rose 3 evals in a row (1 -> 1.1 -> 1.2 -> 1.3) at step 400 (sft)"
    assert f.control.should_training_stop is False  # no patience configured: alerts only


def test_early_stopping_sets_should_training_stop(tmp_path: Path) -> None:
    f = Feeder(tmp_path, stage="dpo", early_stopping_patience=2)
    for step, loss in [(0, 1.0), (50, 0.9), (100, 0.95)]:
        f.log(step, eval_loss=loss)
        assert f.control.should_training_stop is False
    f.log(150, eval_loss=0.91)
    assert f.control.should_training_stop is True
    stops = [a for a in f.alerts() if a["kind"] == "early_stop"]
    assert len(stops) == 1 and stops[0]["step"] == 150 and stops[0]["stage"] == "dpo"
    assert "has not improved for 2 evals (best 0.9 at step 50)" in stops[0]["message"]
    assert any(line.startswith("early stop: eval_loss") for line in f.console())


def test_early_stopping_min_delta(tmp_path: Path) -> None:
    f = Feeder(tmp_path, early_stopping_patience=2, early_stopping_min_delta=0.05)
    for step, loss in [(50, 1.0), (100, 0.98), (150, 0.97)]:  # improvements smaller than min_delta
        f.log(step, eval_loss=loss)
    assert f.control.should_training_stop is True


# -- GPU readings ---------------------------------------------------------------------------


class FakeSampler:
    def __init__(self, sample: GpuSample | None = None, error: bool = False) -> None:
        self.value = sample
        self.error = error

    def sample(self) -> GpuSample | None:
        if self.error:
            raise RuntimeError("NVML went away")
        return self.value


def test_gpu_readings_land_in_logs_and_alert(tmp_path: Path) -> None:
    f = Feeder(tmp_path, memory_fraction=0.9, temperature_c=85)
    f.cb.sampler = FakeSampler(GpuSample(temperature_c=91, utilization_pct=97, used_bytes=23 * GiB,
                                         total_bytes=24 * GiB))
    logs = f.train(10)
    assert logs["gpu_temperature_c"] == 91 and logs["gpu_utilization"] == 97
    assert logs["gpu_memory_used"] == 23 * GiB and logs["gpu_memory_total"] == 24 * GiB
    f.train(20)
    assert sorted(a["kind"] for a in f.alerts()) == ["gpu_memory", "gpu_temperature"]
    messages = {a["kind"]: a["message"] for a in f.alerts()}
    assert messages["gpu_temperature"] == "alert: gpu temperature 91 C > 85 C at step 10 (sft)"
    assert messages["gpu_memory"] == "alert: gpu memory 23.0 of 24.0 GiB (96%) > 90% at step 10 (sft)"


def test_a_failing_gpu_reader_never_fails_training(tmp_path: Path) -> None:
    f = Feeder(tmp_path)
    f.cb.sampler = FakeSampler(error=True)
    logs = f.train(10)
    assert "gpu_temperature_c" not in logs and f.cb.sampler is None
    f.train(20)


def test_real_nvml_sampler_is_quiet_without_a_gpu() -> None:
    from nova.monitor.gpu import GpuSampler

    sampler = GpuSampler(0)
    sample = sampler.sample()
    if sample is None:  # CPU machine (or no NVML): off after the first try
        assert sampler.disabled and sampler.sample() is None
    else:
        assert sample.total_bytes > 0 and 0 <= sample.used_bytes <= sample.total_bytes


def test_nvml_index_follows_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    from nova.monitor.gpu import nvml_index

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert nvml_index(0) == 2 and nvml_index(1) == 3
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1234")
    assert nvml_index(0) == 0
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert nvml_index(1) == 1


def test_monitor_before_metrics_puts_gpu_keys_in_metrics_jsonl(tmp_path: Path) -> None:
    """The wiring the trainer uses: MonitorCallback registered before MetricsCallback."""
    import transformers

    from nova.train.callbacks import MetricsCallback

    f = Feeder(tmp_path)
    f.cb.sampler = FakeSampler(GpuSample(60, 50, 10 * GiB, 24 * GiB))
    handler = transformers.trainer_callback.CallbackHandler(
        [f.cb, MetricsCallback(tmp_path / "metrics.jsonl", "sft")], None, None, None, None)
    f.state.global_step = 10
    handler.on_log(None, f.state, f.control, {"loss": 1.0, "grad_norm": 0.5})
    record = read_jsonl(tmp_path / "metrics.jsonl")[0]
    assert record["gpu_temperature_c"] == 60 and record["gpu_memory_total"] == 24 * GiB


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


# -- status -------------------------------------------------------------------------------------


def test_pid_alive_checks_the_command_line(nova_process: Any, other_process: Any, dead_pid: int) -> None:
    assert pid_alive(nova_process.pid)
    assert not pid_alive(other_process.pid)  # alive, but not nova: the pid was reused
    assert not pid_alive(dead_pid)
    assert not pid_alive(0) and not pid_alive(-1)


def test_status_of_a_running_run(tmp_path: Path, nova_process: Any) -> None:
    run = make_run(tmp_path / "run")
    write_pid(run, nova_process.pid)
    write_jsonl(run / "alerts.jsonl", [{"time": 1.0, "step": s, "stage": "sft", "kind": "grad_norm_high",
                                        "value": 12.0, "threshold": 10.0, "message": f"alert: n at step {s}"}
                                       for s in (10, 20, 30, 40)])
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write('{"stage": "sft", "step": 13')  # a line being written right now
    ps = read_status(run).phases[0]
    assert ps.status == "running" and ps.process.state == "running" and ps.process.pid == nova_process.pid
    assert (ps.stage, ps.step, ps.total_steps, ps.total_exact) == ("sft", 120, 300, True)
    assert ps.seconds_per_step == pytest.approx(2.0)
    assert ps.eta_seconds == pytest.approx(360.0)
    assert ps.train_loss == pytest.approx(2.0 / (1 + 120 / 50)) and ps.eval_step == 100
    assert ps.tokens_per_second == pytest.approx(1620.0)
    assert ps.checkpoint == str(run / "checkpoints" / "sft" / "checkpoint-100")  # not the unsealed checkpoint-110
    assert ps.alert_count == 4 and [a["step"] for a in ps.last_alerts] == [20, 30, 40]
    text = "\n".join(status_lines(read_status(run)))
    assert "step 120 of 300 (40%)" in text and "eta:        6m00s" in text and "running (pid" in text
    assert text.isascii()


def test_status_with_a_stale_pid_file(tmp_path: Path, dead_pid: int, other_process: Any) -> None:
    run = make_run(tmp_path / "run")
    for pid in (dead_pid, other_process.pid):
        write_pid(run, pid)
        ps = read_status(run).phases[0]
        assert ps.status == "stopped" and ps.process.state == "stale" and ps.eta_seconds is None
        assert "not running (stale pid file)" in "\n".join(status_lines(read_status(run)))


def test_status_of_a_pid_on_another_host(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    write_pid(run, 12345, host="some-other-machine")
    ps = read_status(run).phases[0]
    assert ps.process.state == "other_host" and "cannot check" in (ps.note or "")


def test_total_steps_from_config_and_from_epochs(tmp_path: Path) -> None:
    run = make_run(tmp_path / "a", checkpoint=None, max_steps=500)
    assert read_status(run).phases[0].total_steps == 500
    config = ("name: b\nstages:\n  - method: sft\n    training: {num_epochs: 2, micro_batch_size: 4, "
              "gradient_accumulation_steps: 2}\n  - method: dpo\n    training: {max_steps: 40}\n")
    run = make_run(tmp_path / "b", checkpoint=None, config=config)
    (run / "stages" / "sft").mkdir(parents=True)
    (run / "stages" / "sft" / "data_report.json").write_text(json.dumps({"train_records": 100}))
    ps = read_status(run).phases[0]
    assert ps.stages == ["sft", "dpo"]
    assert (ps.total_steps, ps.total_exact) == (26, False)  # ceil(ceil(100 / 4) / 2) * 2 epochs
    assert "stage 1 of 2: sft, dpo" in "\n".join(status_lines(read_status(run)))


def test_status_of_a_pipeline(tmp_path: Path, nova_process: Any) -> None:
    out = tmp_path / "pipe"
    done = make_run(out / "base", last_step=300, checkpoint=300)
    (done / "adapter").mkdir()
    (done / "adapter" / "adapter_config.json").write_text("{}")
    (done / "COMPLETE").write_text("{}")
    running = make_run(out / "chat")
    write_pid(running, nova_process.pid)
    failed = make_run(out / "prefs", last_step=30, checkpoint=None)
    (failed / "recoveries.jsonl").write_text('{"stage": "sft", "step": 20}\n')
    phases = {
        # recorded relative to another cwd: found under out
        "base": {"status": "done", "run_dir": "somewhere/else/base", "started": 100.0, "ended": 160.0},
        "chat": {"status": "running", "run_dir": str(running)},
        "prefs": {"status": "failed", "run_dir": str(failed), "error": "RuntimeError: CUDA out of memory"},
        "dead": {"status": "running", "run_dir": str(out / "dead")},
        "later": {"status": "pending", "run_dir": str(out / "later")},
    }
    (out / "dead").mkdir()
    (out / "pipeline.json").write_text(json.dumps({"phases": phases}))
    status = read_status(out)
    assert status.kind == "pipeline"
    got = {p.name: p.status for p in status.phases}
    assert got == {"base": "done", "chat": "running", "prefs": "failed", "dead": "stopped", "later": "pending"}
    by = {p.name: p for p in status.phases}
    assert by["base"].step == 300 and by["base"].total_steps == 300 and by["base"].eta_seconds is None
    assert by["chat"].eta_seconds == pytest.approx(360.0)
    assert by["prefs"].error == "RuntimeError: CUDA out of memory" and by["prefs"].recoveries == 1
    assert by["chat"].started is not None and by["chat"].ended is None  # from its pid file
    text = "\n".join(status_lines(status))
    assert text.startswith(f"pipeline {out}: 5 phases (1 done, 1 running, 1 failed, 1 stopped, 1 pending)")
    assert ", took 1m00s" in text and "recoveries: 1" in text
    # a run directory inside the pipeline picks up its pipeline.json record
    assert read_status(failed).phases[0].status == "failed"


def test_status_errors(tmp_path: Path) -> None:
    with pytest.raises(NovaError, match="does not exist"):
        read_status(tmp_path / "missing")
    with pytest.raises(NovaError, match="neither a run directory nor a pipeline"):
        read_status(tmp_path)
    (tmp_path / "pipeline.json").write_text("{oops")
    with pytest.raises(NovaError, match="not readable pipeline state"):
        read_status(tmp_path)


def test_status_does_not_import_torch(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    code = ("import sys; from pathlib import Path; import nova.cli.status_cmd, nova.cli.plot_cmd; "
            "from nova.monitor.status import read_status, status_lines; "
            f"status_lines(read_status(Path({str(run)!r}))); "
            "print(','.join(m for m in ('torch', 'transformers', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# -- CLI ------------------------------------------------------------------------------------


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The real entry point (error formatting, exit codes) around an app with just these commands."""
    import typer

    from nova.cli import main, plot_cmd, status_cmd

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
    app.command("status")(status_cmd.status)
    app.command("plot")(plot_cmd.plot)
    monkeypatch.setattr(main, "app", app)
    monkeypatch.setattr(sys, "argv", ["nova", *args])
    with pytest.raises(SystemExit) as exc:
        main.run()
    captured = capsys.readouterr()
    return int(exc.value.code or 0), captured.out, captured.err


def test_cli_status_text_and_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str], nova_process: Any) -> None:
    run = make_run(tmp_path / "run")
    write_pid(run, nova_process.pid)
    code, out, err = run_cli(monkeypatch, capsys, "status", str(run))
    assert code == 0 and err == "" and "step 120 of 300" in out
    code, out, _ = run_cli(monkeypatch, capsys, "status", str(run), "--json")
    data = json.loads(out)
    assert code == 0 and data["kind"] == "run"
    phase = data["phases"][0]
    assert phase["status"] == "running" and phase["step"] == 120 and phase["eta_seconds"] == pytest.approx(360)
    assert phase["process"]["state"] == "running"


def test_cli_status_and_plot_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "status", str(tmp_path / "nope"))
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(monkeypatch, capsys, "plot", str(tmp_path))
    assert code == 2 and "has no metrics.jsonl" in err and len(err.strip().splitlines()) == 1


def test_cli_plot_prints_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path / "pipe" / "chat")
    code, out, _ = run_cli(monkeypatch, capsys, "plot", str(run))
    assert code == 0 and out.strip() == str(run / "plots" / "loss.png")
    (tmp_path / "pipe" / "pipeline.json").write_text(json.dumps(
        {"phases": {"chat": {"status": "running", "run_dir": str(run)}, "later": {"status": "pending"}}}))
    code, out, _ = run_cli(monkeypatch, capsys, "plot", str(tmp_path / "pipe"))
    assert code == 0 and out.strip() == str(run / "plots" / "loss.png")
    assert os.path.getsize(run / "plots" / "loss.png") > 1000


def test_a_resumed_stage_keeps_its_early_stopping_patience(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "metrics.jsonl", [{"stage": "sft", "step": 50, "eval_loss": 1.0},
                                             {"stage": "sft", "step": 100, "eval_loss": 1.1},
                                             {"stage": "dpo", "step": 100, "eval_loss": 0.1}])
    import transformers

    from nova.monitor import MonitorCallback

    out = io.StringIO()
    cb = MonitorCallback(tmp_path, MonitorConfig(early_stopping_patience=2), RunLog(stream=out), "sft", None)
    state, control = transformers.TrainerState(), transformers.TrainerControl()
    state.global_step = 100  # resumed from checkpoint-100
    cb.on_train_begin(None, state, control)
    assert control.should_training_stop is False
    state.global_step = 150
    cb.on_log(None, state, control, logs={"eval_loss": 1.05})
    assert control.should_training_stop is True
    assert "has not improved for 2 evals (best 1 at step 50)" in out.getvalue()


def test_gpu_sampler_reads_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """The NVML path (preflight's probe, one device, no process list) against a fake pynvml."""
    import types

    calls: list[str] = []
    nv = types.ModuleType("pynvml")
    nv.NVML_TEMPERATURE_GPU = 0  # type: ignore[attr-defined]
    nv.nvmlInit = lambda: calls.append("init")  # type: ignore[attr-defined]
    nv.nvmlShutdown = lambda: calls.append("shutdown")  # type: ignore[attr-defined]
    nv.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    nv.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=80 * GiB, free=20 * GiB)  # type: ignore[attr-defined]
    nv.nvmlDeviceGetTemperature = lambda h, kind: 70 + h  # type: ignore[attr-defined]
    nv.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=88, memory=40)  # type: ignore[attr-defined]
    nv.nvmlDeviceGetName = lambda h: b"Fake H100"  # type: ignore[attr-defined]
    nv.nvmlDeviceGetCudaComputeCapability = lambda h: (9, 0)  # type: ignore[attr-defined]

    def no_process_list(h: Any) -> list[Any]:
        raise AssertionError("the monitor must not list GPU processes every log")

    nv.nvmlDeviceGetComputeRunningProcesses = no_process_list  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    from nova.monitor.gpu import GpuSampler

    sample = GpuSampler(0).sample()
    assert sample == GpuSample(temperature_c=73.0, utilization_pct=88.0, used_bytes=60 * GiB, total_bytes=80 * GiB)
    assert calls == ["init", "shutdown"]
