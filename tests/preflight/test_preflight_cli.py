"""``nova preflight`` as a user runs it: exit codes, JSON, a directory holding only config.json."""

from __future__ import annotations

import json
from pathlib import Path

from preflight_support import data_file, model_dir, write_config

from conftest import run_nova


def _config(tmp_path: Path, fixture: str = "smollm2-135m", **training: object) -> Path:
    return write_config(tmp_path, model_dir(tmp_path, fixture), data_file(tmp_path), **training)


def test_config_json_only_model_answers_with_exit_zero(tmp_path: Path) -> None:
    result = run_nova("preflight", "--config", str(_config(tmp_path)), timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verdict: warn" in result.stdout  # warn: no weights next to config.json
    assert "estimate:" in result.stdout and result.stdout.isascii()


def test_fail_verdict_exits_non_zero(tmp_path: Path) -> None:
    config = _config(tmp_path, "llama-3-8b")
    result = run_nova("preflight", "--config", str(config), "--gpu-memory", "8GiB", timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "[FAIL] memory" in result.stdout and "verdict: fail" in result.stdout


def test_json_output_and_overrides(tmp_path: Path) -> None:
    config = _config(tmp_path, "llama-3-8b")
    result = run_nova("preflight", "--config", str(config), "--json", "--gpu-memory", "80GiB", "--gpus", "2",
                      "--set", "training.learning_rate=5e-6", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["verdict"] == "warn" and len(data["gpus"]) == 2
    lr = next(c for c in data["checks"] if c["name"] == "learning_rate")
    assert lr["status"] == "warn" and lr["fix"]
    assert data["estimate"]["total_bytes"] > 0


def test_bad_gpu_memory_is_a_clean_error(tmp_path: Path) -> None:
    result = run_nova("preflight", "--config", str(_config(tmp_path)), "--gpu-memory", "lots", timeout=60)
    assert result.returncode == 2
    assert "cannot read memory size 'lots'" in result.stderr and "Traceback" not in result.stderr
