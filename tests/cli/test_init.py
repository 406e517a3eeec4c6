"""``nova init``: a first config chosen from the data and the memory estimate, each choice said with its reason,
written with comments and validated; an existing file is never replaced without --force."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from nova.config import load_yaml_config


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from nova.cli import main

    monkeypatch.setattr(sys, "argv", ["nova", *args])
    with pytest.raises(SystemExit) as exc:
        main.run()
    captured = capsys.readouterr()
    return int(exc.value.code or 0), captured.out, captured.err


def test_init_chooses_from_the_data_and_the_gpu(tmp_path: Path, tiny_model_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    data = ROOT / "data" / "sora_en.jsonl"  # 152 chats
    code, out, err = run_cli(monkeypatch, capsys, "init", "--model", str(tiny_model_dir), "--data", str(data),
                             "--gpu-memory", "12GiB")
    assert code == 0, err
    written = yaml.safe_load((tmp_path / "sora_en.yaml").read_text())
    text = (tmp_path / "sora_en.yaml").read_text()
    assert "# " in text and "optimizer steps of 16 sequences" in text  # commented
    loaded = load_yaml_config(tmp_path / "sora_en.yaml")  # valid
    stage = loaded.config.stage_list[0]
    assert stage.method == "sft" and written["training"]["num_epochs"] == 3
    t = stage.training
    assert t.micro_batch_size * t.gradient_accumulation_steps == 16
    assert stage.data.eval_split == pytest.approx(15 / 152, abs=1e-3)  # ~10%: 15 of 152 held out
    assert stage.data.max_length in (256, 512, 1024, 2048)
    assert "max_length" in out and "tokens counted with the model's tokenizer" in out
    assert re.search(r"15 of 15[12] records held out", out) and "of 12.0 GiB" in out and "preflight: " in out
    code, _, err = run_cli(monkeypatch, capsys, "init", "--model", str(tiny_model_dir), "--data", str(data))
    assert code == 2 and "sora_en.yaml exists" in err and "--force" in err


def test_init_picks_dpo_for_preference_pairs_and_fits_a_known_hub_model(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from nova.init import choose, render

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    small = choose("meta-llama/Llama-3.1-8B-Instruct", ROOT / "data" / "sora_dpo.jsonl", gpu_memory="24GiB")
    assert small.method == "dpo" and small.learning_rate == pytest.approx(5e-6)
    assert small.micro_batch_size * small.gradient_accumulation_steps == 8
    assert any("known architectures" in w for w in small.why)
    assert any("4 characters a token" in w for w in small.why)  # no tokenizer here: estimated, and said so
    (tmp_path / "c.yaml").write_text(render(small))
    assert load_yaml_config(tmp_path / "c.yaml").config.stage_list[0].method == "dpo"
    tiny = choose("meta-llama/Llama-3.1-8B-Instruct", ROOT / "data" / "sora_dpo_short.jsonl", gpu_memory="24GiB")
    assert tiny.eval_split == 0  # 20 records: too few to hold a handful out
