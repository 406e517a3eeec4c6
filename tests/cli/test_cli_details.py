"""The small things a new user meets first: plan wording, did-you-mean for phases, errors that point at the
--set they came from, banners only after the output checks, and the dry run's token view."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from conftest import ROOT

DEMO = str(ROOT / "configs" / "demo" / "pipeline.yaml")


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from nova.cli import main

    monkeypatch.setattr(sys, "argv", ["nova", *args])
    with pytest.raises(SystemExit) as exc:
        main.run()
    captured = capsys.readouterr()
    return int(exc.value.code or 0), captured.out, captured.err


def test_phase_name_typos_get_a_did_you_mean(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(ROOT)
    code, _, err = run_cli(monkeypatch, capsys, "train", "--config", DEMO, "--phase", "sorra", "--dry-run")
    assert code == 2 and "no phase named 'sorra'" in err and "did you mean 'sora'?" in err
    code, _, err = run_cli(monkeypatch, capsys, "train", "--config", DEMO, "--set", "phases.sorra.lora.r=4",
                           "--dry-run")
    assert code == 2 and "no list item named 'sorra'" in err and "did you mean 'sora'?" in err
    assert "items read from files are addressed by index" in err  # doica comes from doica.yaml


def test_an_error_in_a_set_value_points_at_the_set_not_at_the_file(monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(ROOT)
    code, _, err = run_cli(monkeypatch, capsys, "train", "--config", DEMO, "--set",
                           "phases.sora.lora.r=many", "--dry-run")
    assert code == 2 and "--set phases.sora.lora.r=many" in err
    assert not re.search(r"pipeline\.yaml:\d", err)  # no line of the file: the value is not there
    code, _, err = run_cli(monkeypatch, capsys, "train", "--config", str(ROOT / "configs" / "demo" / "doica.yaml"),
                           "--set", "training.learing_rate=1", "--dry-run")
    assert code == 2 and "--set training.learing_rate=1" in err and "did you mean 'learning_rate'?" in err
    assert not re.search(r"doica\.yaml:\d", err)


def test_dry_run_wording_and_token_view_of_a_local_model(tmp_path: Path, tiny_model_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(ROOT)
    _, out, _ = run_cli(monkeypatch, capsys, "train", "--config", DEMO, "--dry-run")
    assert "pipeline of 2 phases (doica, sora), valid" in out and "phase(s)" not in out
    config = tmp_path / "one.yaml"
    config.write_text(f"name: one\nmodel: {{base: {tiny_model_dir}, quantization: none}}\n"
                      f"data:\n  datasets: [{{path: {ROOT / 'data' / 'sora_short_en.jsonl'}}}]\n"
                      f"output_dir: {tmp_path / 'run'}\n")
    _, out, _ = run_cli(monkeypatch, capsys, "train", "--config", str(config), "--dry-run")
    assert f"config {config}: phase one, valid" in out
    assert "tokens: not computed" not in out
    assert f"tokens ({tiny_model_dir}): min " in out  # the local model's tokenizer gave the token view


def test_export_and_import_refuse_an_existing_output_before_any_banner(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "merged"
    model.mkdir()
    (model / "config.json").write_text("{}")
    taken = tmp_path / "out.gguf"
    taken.write_bytes(b"x")
    code, out, err = run_cli(monkeypatch, capsys, "export", "--model", str(model), "--format", "gguf",
                             "--out", str(taken))
    assert code == 2 and "output exists" in err and out == ""  # no "exporting ..." first
    folder = tmp_path / "ollama"
    folder.mkdir()
    (folder / "mine.txt").write_text("someone's file")
    code, out, err = run_cli(monkeypatch, capsys, "export", "--model", str(model), "--format", "ollama",
                             "--out", str(folder))
    assert code == 2 and "not empty" in err and out == ""
    gguf = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not gguf.is_file():
        pytest.skip("needs the demo GGUF from scripts/setup.sh")
    code, out, err = run_cli(monkeypatch, capsys, "models", "import-gguf", str(gguf), "--out", str(folder))
    assert code == 2 and "not empty" in err and out == ""
