"""Wall time of ``nova preflight`` on a config whose model is a local directory (target: under 3 s).

Runs the real CLI in a subprocess several times (first run included: it pays for cold
imports) and prints the median, for the local machine, a 24 GiB card that fits, and a 12 GiB one
that does not (the memory check then tries other batches and lengths for its fixes). The model
is a directory holding only a Llama-3-8B config.json and the data a 2,000-record JSONL file, both
written to a temporary directory.

    .venv/bin/python scripts/bench_preflight.py [--runs 7] [--config FILE]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "model_configs" / "llama-3-8b.json"


def make_config(work: Path) -> Path:
    model = work / "llama-3-8b"
    model.mkdir()
    shutil.copy(FIXTURE, model / "config.json")
    data = work / "train.jsonl"
    with data.open("w", encoding="utf-8") as f:
        for i in range(2000):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"question {i}"},
                                             {"role": "assistant", "content": f"answer {i}"}]}) + "\n")
    config = work / "phase.yaml"
    config.write_text(f"name: bench\noutput_dir: {work / 'run'}\nmodel:\n  base: {model}\n"
                      f"data:\n  datasets:\n    - path: {data}\n  max_length: 2048\n", encoding="utf-8")
    return config


def time_runs(config: Path, runs: int, extra: list[str]) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "nova", "preflight", "--config", str(config), *extra],
                                capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if result.returncode not in (0, 1):
            raise SystemExit(f"nova preflight failed ({result.returncode}):\n{result.stderr}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--config", type=Path, help="benchmark this config instead of the generated one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = args.config or make_config(Path(tmp))
        # 12 GiB does not fit: the check then searches the batch, the checkpointing and a shorter length
        for label, extra in (("local GPUs/CPU", []), ("--gpu-memory 24GiB", ["--gpu-memory", "24GiB"]),
                             ("--gpu-memory 12GiB, the fixes searched", ["--gpu-memory", "12GiB"])):
            times = time_runs(config, args.runs, extra)
            print(f"nova preflight ({label}): median {statistics.median(times):.2f} s, "
                  f"min {min(times):.2f} s, max {max(times):.2f} s over {len(times)} runs")


if __name__ == "__main__":
    main()
