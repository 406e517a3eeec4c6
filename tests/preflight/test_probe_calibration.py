"""Probe-calibrated estimates: preflight scales its estimate by what a probe measured for the same model and
code path on this machine, and says so; another model, path or machine keeps the plain estimate."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from nova.preflight import probe_calibration as pc
from nova.preflight.estimate import CALIBRATED, Settings, estimate_for_shape, model_shape

LLAMA = Path(__file__).resolve().parents[2] / "src" / "nova" / "resources" / "model_configs" / "Llama-3.2-1B.json"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NOVA_CACHE_DIR", str(tmp_path))
    return tmp_path


def shape_and_settings() -> tuple[object, Settings]:
    shape = model_shape(json.loads(LLAMA.read_text()))
    return shape, Settings(quantization="none", compute_bytes=4, micro_batch_size=1, seq_len=256, device="cpu")


def test_a_stored_probe_scales_a_later_estimate_and_says_so(cache: Path) -> None:
    shape, settings = shape_and_settings()
    est = estimate_for_shape(shape, settings, CALIBRATED)
    pc.store(settings, shape, est.total_bytes, int(est.total_bytes * 1.2), "cpu")
    later = estimate_for_shape(shape, Settings(**{**settings.__dict__, "micro_batch_size": 4}), CALIBRATED)
    calibrated = pc.calibrated(later, shape)
    assert calibrated.total_bytes == pytest.approx(later.total_bytes * 1.2, rel=1e-6)
    assert "calibrated by a probe on this machine, today" in calibrated.notes[-1]


def test_another_path_or_an_old_probe_keeps_the_plain_estimate(cache: Path) -> None:
    shape, settings = shape_and_settings()
    est = estimate_for_shape(shape, settings, CALIBRATED)
    pc.store(settings, shape, est.total_bytes, est.total_bytes * 2, "cpu")
    other = Settings(**{**settings.__dict__, "gradient_checkpointing": not settings.gradient_checkpointing})
    plain = estimate_for_shape(shape, other, CALIBRATED)
    assert pc.calibrated(plain, shape).total_bytes == plain.total_bytes
    data = json.loads((cache / pc.FILE).read_text())
    for entry in data.values():
        entry["time"] = time.time() - (pc.MAX_AGE_DAYS + 1) * 86400
    (cache / pc.FILE).write_text(json.dumps(data))
    assert pc.calibrated(est, shape).total_bytes == est.total_bytes
    (cache / pc.FILE).write_text("{not json")  # a damaged file only loses the refinement
    assert pc.calibrated(est, shape).total_bytes == est.total_bytes


def test_preflight_memory_check_says_it_was_calibrated(cache: Path, tmp_path: Path) -> None:
    from nova.config.schema import StageConfig
    from nova.preflight.checks_memory import MemoryContext, check_memory
    from nova.preflight.gpus import GpuSnapshot

    shape, settings = shape_and_settings()
    est = estimate_for_shape(shape, settings, CALIBRATED)
    stage = StageConfig()
    ctx = MemoryContext(GpuSnapshot("no_gpu", ()), None, 64 * 1024**3)
    before, _, _ = check_memory("memory", shape, settings, stage, ctx)
    pc.store(settings, shape, est.total_bytes, est.total_bytes * 3, "cpu")
    after, calibrated, _ = check_memory("memory", shape, settings, stage, ctx)
    assert "calibrated by a probe" not in before.message
    assert "calibrated by a probe on this machine, today" in after.message
    assert calibrated.total_bytes == pytest.approx(est.total_bytes * 3, rel=1e-6)


def test_on_the_cpu_a_model_whose_weights_alone_do_not_fit_is_not_told_to_shorten_its_data(cache: Path) -> None:
    from nova.config.schema import StageConfig
    from nova.preflight.checks_memory import MemoryContext, check_memory
    from nova.preflight.gpus import GpuSnapshot

    shape, settings = shape_and_settings()  # Llama-3.2-1B in fp32: about 4.6 GiB of weights
    stage = StageConfig()
    roomy, tight = (MemoryContext(GpuSnapshot("no_gpu", ()), None, gib * 1024**3) for gib in (5.9, 3))
    check, _, _ = check_memory("memory", shape, settings, stage, roomy)
    assert check.status == "fail" and "shorten data.max_length" in (check.fix or "")  # the activations do not fit
    check, _, _ = check_memory("memory", shape, settings, stage, tight)
    assert check.status == "fail" and "shorten" not in (check.fix or "")
    assert "weights alone take" in (check.fix or "") and "smaller model" in (check.fix or "")
