"""Preflight on the other platforms: an Apple Silicon Mac (its GPU, mps, sharing the RAM) and Windows
without long paths. The host is described through the Environment preflight is given, as on a Mac."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from preflight_support import cuda_env, loaded, no_gpu

from nova import system
from nova.config.load import load_yaml_config
from nova.files import GiB
from nova.preflight import run_preflight
from nova.preflight.environment import Environment
from nova.preflight.report import PreflightReport
from nova.system import AppleGpu


def mac(macos: str = "14.5", total_gib: float = 64, available_gib: float = 40) -> Environment:
    return replace(cuda_env(), torch_cuda=None,
                   apple=AppleGpu("Apple M2 Max", macos, int(total_gib * GiB), int(available_gib * GiB)))


def _check(report: PreflightReport, name: str) -> tuple[str, str, str]:
    found = [c for c in report.checks if c.name == name]
    assert found, [c.name for c in report.checks]
    return found[0].status, found[0].message, found[0].fix


def test_the_gpu_is_apples_with_its_unified_memory(tmp_path: Path) -> None:
    report = run_preflight(loaded(tmp_path, "qwen-1_8b"), probe=no_gpu(), env=mac())
    status, message, _ = _check(report, "gpu")
    assert status == "pass" and "Apple M2 Max GPU (mps), macOS 14.5" in message
    assert "unified memory shared with the CPU" in message and "40.0 GiB available of 64.0 GiB" in message
    status, message, _ = _check(report, "precision")
    assert (status, message) == ("pass", "Apple GPU (mps): compute dtype bf16")
    status, message, _ = _check(report, "memory")
    assert "of unified memory on Apple M2 Max" in message and "the mps allocator's overhead is not measured" in message
    assert "40.0 GiB available of 64.0 GiB" in message
    assert report.to_dict()["environment"]["apple_gpu"]["chip"] == "Apple M2 Max"


def test_nf4_on_mps_is_said_to_be_unmeasured_and_a_refusal_fails(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    report = run_preflight(loaded(tmp_path, "qwen-1_8b"), probe=no_gpu(), env=mac())
    status, message, fix = _check(report, "device")
    assert status == "warn" and "nf4 on Apple M2 Max's GPU (mps) runs through bitsandbytes' mps backend" in message
    assert "model.quantization: none" in fix
    import nova.model.loading as loading

    monkeypatch.setattr(loading, "mps_quantization_problem", lambda q: ("no kernels", "set model.quantization: none"))
    report = run_preflight(loaded(tmp_path, "qwen-1_8b"), probe=no_gpu(), env=mac())
    assert _check(report, "device") == ("fail", "no kernels; training would run on Apple M2 Max's GPU (mps)",
                                        "set model.quantization: none")
    assert report.verdict == "fail"


def test_before_macos_14_bf16_is_refused_and_auto_is_fp32(tmp_path: Path) -> None:
    report = run_preflight(loaded(tmp_path, "qwen-1_8b"), probe=no_gpu(), env=mac("13.6"))
    assert _check(report, "precision") == ("pass", "Apple GPU (mps): compute dtype fp32", "")
    cfg = loaded(tmp_path, "qwen-1_8b")
    report = run_preflight(load_yaml_config(cfg.path, ["model.compute_dtype=bf16"]), probe=no_gpu(),
                           env=mac("13.6"))
    status, message, fix = _check(report, "precision")
    assert status == "fail" and "only from macOS 14 (this is 13.6)" in message and "compute_dtype: auto" in fix


def test_an_8b_model_that_does_not_fit_the_unified_memory_fails(tmp_path: Path) -> None:
    report = run_preflight(loaded(tmp_path, "llama-3-8b"), probe=no_gpu(),
                           env=mac(total_gib=16, available_gib=6))
    status, _, fix = _check(report, "memory")
    assert status == "fail" and "choose a smaller model" in fix


def test_windows_without_long_paths_checks_the_deepest_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = loaded(tmp_path, "qwen-1_8b")
    report = run_preflight(cfg, probe=no_gpu(), env=cuda_env())
    assert not [c for c in report.checks if c.name == "paths"]  # Linux: no such limit, no such check
    monkeypatch.setattr(system, "on_windows", lambda: True)
    monkeypatch.setattr(system, "windows_long_paths_enabled", lambda: False)
    report = run_preflight(cfg, probe=no_gpu(), env=cuda_env())
    assert _check(report, "paths")[0] == "pass"
    deep = tmp_path / ("d" * 200)
    deep.mkdir()
    report = run_preflight(loaded(deep, "qwen-1_8b"), probe=no_gpu(), env=cuda_env())
    status, message, fix = _check(report, "paths")
    assert status == "fail" and "past Windows' 260-character limit (long paths are off)" in message
    assert "LongPathsEnabled" in fix and "shorter path" in fix
