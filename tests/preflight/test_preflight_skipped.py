"""A skipped share is a verdict: preflight, the dry run and the data report judge it alike, and agree on counts."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from preflight_support import model_dir, no_gpu

from nova.config.load import LoadedConfig, load_yaml_config
from nova.errors import DataError
from nova.preflight import run_preflight


def _config(tmp: Path, good: int, bad: int, lr: float = 2e-4, **data: object) -> LoadedConfig:
    path = tmp / "mixed.jsonl"
    rows = [json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]})
            for i in range(good)] + ["{oops"] * bad
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    cfg = {"name": "pf", "output_dir": str(tmp / "run"), "model": {"base": str(model_dir(tmp))},
           "data": {"datasets": [{"path": str(path)}], "on_error": "skip", **data},
           "training": {"micro_batch_size": 1, "gradient_accumulation_steps": 1, "max_steps": 10,
                        "learning_rate": lr}}
    (tmp / "phase.yaml").write_text(yaml.safe_dump(cfg))
    return load_yaml_config(tmp / "phase.yaml")


def _data_check(loaded: LoadedConfig) -> object:
    report = run_preflight(loaded, probe=no_gpu())
    return next(c for c in report.checks if c.name == "data")


def test_most_records_skipped_fails_preflight_naming_the_reason_and_a_fix(tmp_path: Path) -> None:
    check = _data_check(_config(tmp_path, good=3, bad=17))
    assert check.status == "fail"  # type: ignore[attr-defined]
    assert "17 of 20 records skipped (85%" in check.message and "invalid JSON" in check.message  # type: ignore[attr-defined]
    assert "JSON object" in check.fix  # type: ignore[attr-defined]  # what fixes the record, not on_error


def test_a_small_skipped_share_warns_and_a_tiny_one_passes(tmp_path: Path) -> None:
    warn = _data_check(_config(tmp_path, good=18, bad=2, eval_split=0))
    assert warn.status == "warn" and "2 of 20 records skipped (10%" in warn.message  # type: ignore[attr-defined]
    ok = _data_check(_config(tmp_path, good=18, bad=2, eval_split=0, skip_warn_share=0.2))
    assert ok.status == "pass"  # type: ignore[attr-defined]


def test_training_refuses_data_above_the_fail_share(tmp_path: Path) -> None:
    import pytest

    from nova.data import check_data

    loaded = _config(tmp_path, good=3, bad=17)
    with pytest.raises(DataError) as info:
        check_data(loaded.config.stages[0].data, method="sft")  # type: ignore[union-attr]
    assert info.value.title == "most of the data cannot be used"


def test_the_dry_run_schedule_counts_the_records_its_data_check_kept(tmp_path: Path) -> None:
    from nova.train.dryrun import dry_run

    loaded = _config(tmp_path, good=16, bad=4, lr=5e-6, skip_warn_share=0.5)  # 16 kept -> 14 train, 2 held out
    out = dry_run(loaded)
    text = "\n".join(out.lines)
    assert "train 14, eval 2" in text
    assert "(fix: raise training.learning_rate to about 0.0002" in text  # a warning of the dry run has its fix
    pf = run_preflight(loaded, probe=no_gpu(), check_data=False)  # as the dry run calls it
    schedule = next(c for c in pf.checks if c.name == "schedule")
    assert "over 14 records" in schedule.message, schedule.message


def test_data_errors_say_what_fixes_the_data_not_on_error(tmp_path: Path) -> None:
    import pytest

    from nova.data import check_data

    loaded = _config(tmp_path, good=3, bad=1, on_error="fail")
    with pytest.raises(DataError) as info:
        check_data(loaded.config.stages[0].data, method="sft")  # type: ignore[union-attr]
    text = "\n".join(info.value.lines())
    assert "on_error" not in text and "would skip" not in text and "(make the line one JSON object" in text


def test_preflight_names_the_files_of_a_data_directory_it_did_not_read(tmp_path: Path) -> None:
    _config(tmp_path, good=10, bad=0, eval_split=0)
    folder = tmp_path / "folder"
    folder.mkdir()
    (tmp_path / "mixed.jsonl").rename(folder / "part.JSONL")
    (folder / "notes.md").write_text("about", encoding="utf-8")
    cfg = yaml.safe_load((tmp_path / "phase.yaml").read_text())
    cfg["data"]["datasets"] = [{"path": str(folder)}]
    (tmp_path / "phase.yaml").write_text(yaml.safe_dump(cfg))
    check = _data_check(load_yaml_config(tmp_path / "phase.yaml"))
    assert check.status == "pass" and f"{folder}: 1 of 2 files read; not read: 1 .md" in check.message  # type: ignore[attr-defined]
