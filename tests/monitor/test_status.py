"""``nova status`` and ``nova plot`` on synthetic runs: progress, liveness, pipelines, CLI.

Everything here is fed synthetic logs and files: no model is trained, so the file runs in seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from monitor_support import make_run, write_jsonl, write_pid

from nova.errors import NovaError
from nova.monitor.render import status_lines
from nova.monitor.status import read_status
from nova.runs.process import pid_alive

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
    config = ("name: b\nmodel: {base: some/model}\nstages:\n  - method: sft\n"
              "    training: {num_epochs: 2, micro_batch_size: 4, gradient_accumulation_steps: 2}\n"
              "  - method: dpo\n    training: {max_steps: 40}\n")
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
    with pytest.raises(NovaError, match="not pipeline state nova can read"):
        read_status(tmp_path)


def test_status_does_not_import_torch(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    code = ("import sys; from pathlib import Path; import nova.cli.status_cmd, nova.cli.plot_cmd; "
            "from nova.monitor.render import status_lines; from nova.monitor.status import read_status; "
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




# -- what a live run is doing (activity.json) ---------------------------------------------------


def test_status_shows_what_a_live_run_is_doing_instead_of_an_eta(tmp_path: Path, nova_process: Any) -> None:
    import time

    run = make_run(tmp_path / "run")
    write_pid(run, nova_process.pid)
    assert read_status(run).phases[0].eta_seconds is not None  # training: step of total and an ETA
    (run / "activity.json").write_text(json.dumps({"what": "smoke prompts", "done": 1, "total": 2,
                                                   "since": time.time() - 65, "pid": nova_process.pid}))
    ps = read_status(run).phases[0]
    assert ps.doing is not None and ps.doing.startswith("smoke prompts 1/2 (for 1m0")
    assert ps.eta_seconds is None  # not "eta 0s" while the smoke prompts are answered
    text = "\n".join(status_lines(read_status(run)))
    assert "  now:        smoke prompts 1/2" in text and "eta:" not in text
    (run / "activity.json").write_text(json.dumps({"what": "training", "stage": "sft", "since": time.time()}))
    ps = read_status(run).phases[0]
    assert ps.eta_seconds is not None and "now:" not in "\n".join(status_lines(read_status(run)))


def test_a_dead_run_activity_is_not_shown(tmp_path: Path, dead_pid: int) -> None:
    run = make_run(tmp_path / "run")
    write_pid(run, dead_pid)
    (run / "activity.json").write_text(json.dumps({"what": "smoke prompts", "done": 1, "total": 2}))
    ps = read_status(run).phases[0]
    assert ps.status == "stopped" and ps.doing is None


# -- nova status with no path, and --watch ------------------------------------------------------


def test_cli_status_with_no_path_lists_every_run_under_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str],
                                                                   nova_process: Any, dead_pid: int) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(monkeypatch, capsys, "status")
    assert code == 0 and "no runs under checkpoints" in out
    live = make_run(tmp_path / "checkpoints" / "demo" / "doica")
    write_pid(live, nova_process.pid)
    (tmp_path / "checkpoints" / "demo" / "pipeline.json").write_text(json.dumps(
        {"phases": {"doica": {"status": "running", "run_dir": str(live)}, "sora": {"status": "pending"}}}))
    old = make_run(tmp_path / "checkpoints" / "alone", last_step=40)
    write_pid(old, dead_pid)
    write_jsonl(old / "alerts.jsonl", [{"time": 1.0, "step": 30, "stage": "sft", "kind": "grad_norm_high",
                                        "message": "alert: grad_norm 50 > 10 at step 30 (sft)"}])
    for args in (("status",), ("status", "checkpoints")):  # a directory of runs is listed, not refused
        code, out, err = run_cli(monkeypatch, capsys, *args)
        lines = out.splitlines()
        assert code == 0 and err == "" and lines[0] == "runs under checkpoints: 2, newest first"
        doica = next(x for x in lines if x.startswith("  doica"))
        assert "running" in doica and "sft step 120/300" in doica and "loss 0.5882, eval 0.7875" in doica
        assert "eta 6m00s" in doica and f"alive (pid {nova_process.pid})" in doica
        assert any(x.startswith("  sora") and "pending" in x for x in lines)
        alone = next(x for x in lines if x.startswith("  alone"))
        assert "stopped" in alone and "not running" in alone and "1 alert" in alone
        assert "latest alert: alert: grad_norm 50 > 10 at step 30 (sft)" in out
    code, out, _ = run_cli(monkeypatch, capsys, "status", "--json")
    assert code == 0 and {r["path"] for r in json.loads(out)["runs"]} == {"checkpoints/demo", "checkpoints/alone"}


def test_cli_status_watch_redraws_until_the_run_ends(tmp_path: Path) -> None:
    from conftest import ROOT, spawn

    trainer = spawn("nova", "train")
    run = make_run(tmp_path / "run")
    write_pid(run, trainer.pid)
    watcher = subprocess.Popen([sys.executable, "-m", "nova", "status", str(run), "--watch", "0.5"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    import time

    time.sleep(3)
    assert watcher.poll() is None  # still watching a live run
    trainer.kill()
    trainer.wait()
    out, err = watcher.communicate(timeout=30)
    assert watcher.returncode == 0, err
    blocks = [b for b in out.split("\n\n") if b.strip()]
    assert len(blocks) >= 3 and all("step 120 of 300" in b for b in blocks)  # piped: one block per refresh
    assert "every 0.5 s" in blocks[0] and "no run shown is alive; stopped watching" in blocks[-1]


def test_a_stage_past_its_last_step_is_finishing_not_eta_zero(tmp_path: Path, nova_process: Any) -> None:
    import time

    run = make_run(tmp_path / "run", last_step=300, max_steps=300)
    write_pid(run, nova_process.pid)
    (run / "activity.json").write_text(json.dumps({"what": "training", "stage": "sft", "since": time.time()}))
    ps = read_status(run).phases[0]
    assert ps.eta_seconds is None and ps.doing == "finishing stage sft: its last evaluation and checkpoint"
    text = "\n".join(status_lines(read_status(run)))
    assert "now:        finishing stage sft" in text and "eta" not in text
