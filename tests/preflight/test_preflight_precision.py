"""Preflight names the dtype and device training will use: both ask nova.model.loading."""

from __future__ import annotations

from pathlib import Path

import pytest
from preflight_support import loaded, no_gpu

from nova.preflight import run_preflight

SHORT = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


@pytest.mark.parametrize("bf16", ["1", "0"])
def test_preflight_precision_is_the_placement_training_chooses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               bf16: str) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available() or (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        pytest.skip("compares the CPU path")
    from nova.model.loading import choose_placement

    monkeypatch.setenv("NOVA_CPU_BF16", bf16)  # a CPU with (1) or without (0) native bf16
    cfg = loaded(tmp_path, "smollm2-135m", n=20, chat=True)
    report = run_preflight(cfg, probe=no_gpu())  # the real environment: what this machine reports
    precision = next(c for c in report.checks if c.name == "precision")
    placement = choose_placement(cfg.config.model.compute_dtype)  # type: ignore[union-attr]
    assert precision.message == f"{placement.device.upper()}: compute dtype {SHORT[placement.dtype_name]}"
    assert placement.dtype_name == ("bfloat16" if bf16 == "1" else "float32")
    assert report.estimate is not None and report.estimate["compute_bytes"] == (2 if bf16 == "1" else 4)
