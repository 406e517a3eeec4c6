"""The GPU kit (scripts/gpu_check.py): its grid, its comparisons, and a CPU dry run of the whole path."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from conftest import ROOT

GiB = 1024**3


def _kit() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_grid_covers_the_issue_and_every_case_has_an_estimate() -> None:
    kit = _kit()
    grid = kit.full_grid()
    assert {c.model for c in grid} == {"Llama-3.1-8B", "Mistral-7B-v0.3", "Qwen2.5-7B", "Qwen2.5-1.5B"}
    assert {512, 8192} <= {c.seq_len for c in grid}
    assert {c.method for c in grid} == {"sft", "dpo"} and {c.checkpointing for c in grid} == {True, False}
    assert len({c.lora_r for c in grid}) > 1 and len({c.micro_batch for c in grid}) > 1
    assert len({c.name for c in grid}) == len(grid)
    for case in grid:
        config = kit.model_config(case.model, dry_run=False)
        est = kit.nova_estimate(config, case, kit.stage_for(case, 3), on_gpu=True, view_gib=24)
        assert 0 < est["total_bytes"] < est["upper_bytes"] < 139 * GiB, case.name
    dry = kit.dry_grid()
    assert {c.method for c in dry} == {"sft", "dpo"} and {c.attn for c in dry} == {"sdpa", "eager"}
    assert {c.packing for c in dry} == {"auto", "pad"} and False in {c.checkpointing for c in dry}


def test_a_verdict_of_fits_that_would_not_fit_is_wrong() -> None:
    kit = _kit()

    def record(verdict: str, reserved_gib: float) -> dict[str, object]:
        est = {"reserved_bytes": 20 * GiB, "allocated_bytes": 18 * GiB, "total_bytes": 21 * GiB,
               "verdict": verdict, "view_gib": 24.0}
        got = {"max_reserved": reserved_gib * GiB, "max_allocated": 17 * GiB, "outside_torch": GiB // 2}
        return {"estimate": est, "measured": got}

    assert kit.compare(record("pass", 20))["verdict_ok"]
    assert not kit.compare(record("pass", 24))["verdict_ok"]  # said fits, needs 24.5 GiB
    assert kit.compare(record("warn", 20))["verdict_ok"]  # cautious is not wrong
    assert not kit.compare(record("fail", 20))["verdict_ok"]  # would have fit
    assert kit.compare(record("pass", 20))["error_reserved"] == pytest.approx(0.0)


def test_rows_are_written_for_the_docs(tmp_path: Path) -> None:
    kit = _kit()
    env = {"gpu": "NVIDIA H200", "versions": {"torch": "2.11", "transformers": "5.17", "bitsandbytes": "0.50.2"}}
    case = {"name": "x", "estimate": {"reserved_bytes": GiB, "allocated_bytes": GiB, "verdict": "pass"},
            "measured": {"max_reserved": GiB, "max_allocated": GiB, "outside_torch": 0, "tokens_per_second": 10.0},
            "comparison": {"error_reserved": 0.0, "error_allocated": 0.0, "verdict_ok": True}}
    e2e = {"nova_train": {"seconds": 1.0, "rc": 0}, "nova_tokens_per_second": 123.0}
    kit.write_rows({"environment": env, "cases": [case], "end_to_end": e2e}, tmp_path)
    assert "| x | 1.00 | 1.00 | +0.0%" in (tmp_path / "memory_rows.md").read_text()
    assert "| nova train | 123 |" in (tmp_path / "speed_rows.md").read_text()


@pytest.mark.slow
def test_dry_run_on_cpu_trains_every_case_and_runs_the_cli(tmp_path: Path) -> None:
    """The same code as on the GPU (nova's trainers, nf4 through bitsandbytes, the CLI), at tiny sizes."""
    out = tmp_path / "kit"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((out / "gpu_check.json").read_text())
    assert len(data["cases"]) == len(_kit().dry_grid())
    for case in data["cases"]:
        got = case.get("measured", {})
        assert "skipped" not in case and len(got.get("step_seconds", [])) == 2, (case["name"], got.get("error"))
    e2e = data["end_to_end"]
    for step in ("nova_train", "trl_baseline", "merge", "export"):
        assert e2e[step]["rc"] == 0, (step, e2e[step]["stderr_tail"])
    assert e2e["nova_tokens_per_second"] and e2e["trl_tokens_per_second"]
    assert (out / "memory_rows.md").exists() and (out / "speed_rows.md").exists()
