"""The UI's logic without a browser: chart series, the token gate, paths under the root, run discovery,
the editor's validation and the launcher's refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from ui_support import trainer_stand_in_fixture, ui_root_fixture  # noqa: F401  (the fixtures)

from nova.errors import NovaError
from nova.ui.editor import config_path, validate
from nova.ui.launch import Launcher, Options
from nova.ui.runs import discover, overview, run_view
from nova.ui.security import check_bind, check_token, inside, is_loopback
from nova.ui.series import CHARTS, chart_data, charts, stage_offsets


def test_stages_follow_each_other_on_one_axis() -> None:
    records = [{"stage": "sft", "step": 1, "loss": 2.0}, {"stage": "sft", "step": 10, "loss": 1.0},
               {"stage": "dpo", "step": 2, "loss": 0.7}, {"stage": "dpo", "step": 4, "eval_loss": 0.6}]
    assert stage_offsets(records) == [("sft", 0), ("dpo", 10)]
    loss = chart_data(records, CHARTS[0])
    assert loss is not None
    assert loss["x"] == [1, 10, 12, 14] and loss["keys"] == ["loss", "eval_loss"]
    assert loss["y"] == [[2.0, 1.0, 0.7, None], [None, None, None, 0.6]]


def test_a_nan_loss_is_a_gap_and_charts_without_data_are_left_out() -> None:
    records = [{"stage": "sft", "step": 1, "loss": float("nan")}, {"stage": "sft", "step": 2, "loss": 1.5}]
    drawn = charts(records)
    assert [c["name"] for c in drawn] == ["loss"]
    assert drawn[0]["y"] == [[None, 1.5]]


def test_memory_in_gib_and_reward_curves_by_name() -> None:
    records = [{"stage": "dpo", "step": 1, "memory_rss": 2 * 2**30, "rewards/margins": 0.1, "rewards/chosen": 0.2}]
    by_name = {c["name"]: c for c in charts(records)}
    assert by_name["memory"]["y"] == [[2.0]]
    assert by_name["rewards"]["keys"] == ["rewards/chosen", "rewards/margins"]


def test_token_gate() -> None:
    ok = "s3cret"
    assert check_token(ok, query=None, cookie=None, header=None, unsafe_method=False).status == 401
    assert check_token(ok, query="wrong", cookie=None, header=None, unsafe_method=False).status == 403
    assert check_token(ok, query=None, cookie=ok, header=None, unsafe_method=False).status == 0
    # a POST with only the cookie (what a form on another site would send) is refused
    assert check_token(ok, query=None, cookie=ok, header=None, unsafe_method=True).status == 403
    assert check_token(ok, query=None, cookie=ok, header=ok, unsafe_method=True).status == 0


def test_only_loopback_without_the_flag() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.1.2.3")
    assert check_bind("127.0.0.1", False) is None
    with pytest.raises(NovaError, match="allow-remote"):
        check_bind("0.0.0.0", False)
    warning = check_bind("0.0.0.0", True)
    assert warning is not None and "training data" in warning and "start" in warning


def test_paths_stay_under_the_root(tmp_path: Path) -> None:
    (tmp_path / "root" / "run").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path / "secret")
    assert inside(tmp_path / "root", "run") == (tmp_path / "root" / "run").resolve()
    for bad in ("../secret", "/etc", "link", "run/../../secret"):
        with pytest.raises(NovaError, match="outside the ui root"):
            inside(tmp_path / "root", bad)
    with pytest.raises(NovaError, match="not a YAML file"):
        config_path(tmp_path / "root", "run/notes.txt")


def test_discovery_and_overview(ui_root: Path) -> None:
    found = [p.relative_to(ui_root.resolve()).as_posix() for p in discover(ui_root)]
    assert found == ["demo", "live"]  # the pipeline once (its phases come from pipeline.json), then the run
    runs = {e["path"]: e for e in overview(ui_root)["runs"]}
    assert [(p["name"], p["state"], p["alive"]) for p in runs["demo"]["phases"]] == [
        ("doica", "finished", False), ("sora", "finished", False)]
    assert [(p["state"], p["alive"]) for p in runs["live"]["phases"]] == [("running", True)]


def test_run_view_reads_every_record(ui_root: Path) -> None:
    view = run_view(ui_root, "demo/sora")
    assert [c["name"] for c in view["charts"]][:2] == ["loss", "lr"]
    assert set(view["data_reports"]) == {"sft", "dpo"} and view["data_reports"]["sft"]["train_records"] == 19
    assert view["status"]["forgetting"]["doica"]["change"] == 0.0335
    assert [m["name"] for m in view["eval"]["models"]][:2] == ["base", "doica"]
    assert set(view["fingerprints"]) == {"sft", "dpo"} and view["fingerprints"]["dpo"]["digest"]
    assert view["config"]["flat"]["name"] == "sora" and "_chain" not in str(list(view["config"]["flat"]))
    assert view["card"] and view["card"].startswith("---")
    assert len(view["smoke"]) == 2 and "<script>" in view["smoke"][1]["prompt"]
    with pytest.raises(NovaError, match="outside the ui root"):
        run_view(ui_root, "../..")


def test_validation_speaks_as_the_cli(tmp_path: Path) -> None:
    target = tmp_path / "x.yaml"
    result = validate(target, "name: x\nmodel: {base: m}\ntraining:\n  learning_rat: 1.0e-4\n")
    assert not result.ok
    assert result.lines[0] == f"error: invalid config {target}: {target}:4 training.learning_rat: unknown key " \
                              "(did you mean 'learning_rate'?)"
    assert result.problems == [{"line": 4, "text": f"{target}:4 training.learning_rat: unknown key "
                                                   "(did you mean 'learning_rate'?)"}]
    assert list(tmp_path.iterdir()) == []  # the draft beside it is gone, and nothing was saved
    assert validate(target, "name: x\nmodel: {base: m}\n").ok


def test_a_live_run_cannot_be_launched_again(ui_root: Path, tmp_path: Path) -> None:
    config = tmp_path / "again.yaml"
    text = f"name: live\noutput_dir: {ui_root / 'live'}\nmodel: {{base: m}}\n"
    with pytest.raises(NovaError, match="is in use by running"):
        Launcher(ui_root).launch(config, text, Options())
    assert not config.exists()  # refused before anything was saved or started
