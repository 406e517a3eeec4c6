"""Forgetting across phases on the demo, three ways: no protection, replay, replay + KL.

Trains the demo's Doica phase once (configs/demo/doica.yaml), then Sora's SFT stage on top of it
three times, side by side in one invocation, identical except for ``retention``:

  none       retention: {}
  replay     retention: {replay: 0.25}
  replay+kl  retention: {replay: 0.25, kl_weight: 0.5}

and reports, from each Sora run's retention.json, Doica's holdout loss when Doica finished and
after Sora (the forgetting table), Sora's own holdout loss (what the new phase learned), and the
wall time of each Sora run. Writes the figures to --out (JSON) and prints a Markdown table for
docs/forgetting.md. Run from the repository root after scripts/setup.sh:

  .venv/bin/python scripts/bench_forgetting.py --out docs/forgetting.json [--variants none,replay,replay+kl]
                                                [--doica A_FINISHED_DOICA_RUN]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"none": {}, "replay": {"replay": 0.25}, "replay+kl": {"replay": 0.25, "kl_weight": 0.5}}


def _sora_stage() -> dict:
    """Sora's SFT stage exactly as configs/demo/pipeline.yaml has it (its DPO stage is left out)."""
    pipeline = yaml.safe_load((ROOT / "configs" / "demo" / "pipeline.yaml").read_text())
    sora = next(p for p in pipeline["phases"] if isinstance(p, dict) and p.get("name") == "sora")
    return {"lora": sora["lora"], **{k: v for k, v in sora["stages"][0].items()}}


def _absolute(phase: dict) -> dict:
    """The phase's base model and data paths made absolute (relative paths in a config are relative to the
    repository root), so the script runs from any directory and a --doica run trained from the repository
    root with absolute paths is the same config."""
    if "model" in phase:
        phase["model"]["base"] = str(ROOT / phase["model"]["base"])
    for source in phase.get("data", {}).get("datasets", []):
        source["path"] = str(ROOT / source["path"])
    return phase


def _pipeline(out: Path, retention: dict) -> Path:
    doica = _absolute(yaml.safe_load((ROOT / "configs" / "demo" / "doica.yaml").read_text()))
    doica.pop("smoke_prompts", None)
    sora = {"name": "sora", "start_from": "doica", "retention": retention, **_sora_stage()}
    path = out / "pipeline.yaml"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"output_dir": str(out), "phases": [doica, sora]}, sort_keys=False))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/nova-bench-forgetting"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, from: {', '.join(VARIANTS)}")
    parser.add_argument("--doica", type=Path, default=None,
                        help="a finished Doica run directory of this config to reuse instead of training one")
    args = parser.parse_args()
    from nova.config import load_yaml_config
    from nova.console import RunLog
    from nova.train.pipeline import run_config

    shutil.rmtree(args.work, ignore_errors=True)
    rows = {}
    first: Path | None = None
    if args.doica is not None:  # reuse: copied into a scratch pipeline directory like the others
        first = args.work / "reused"
        shutil.copytree(args.doica, first / "doica", ignore=shutil.ignore_patterns("nova.pid"))
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(chosen) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    for name in chosen:
        retention = VARIANTS[name]
        out = args.work / name.replace("+", "_")
        config = _pipeline(out, retention)
        if first is not None:  # the same Doica for every variant: trained once, copied
            shutil.copytree(first / "doica", out / "doica", ignore=shutil.ignore_patterns("nova.pid"))
        began = time.time()
        run_config(load_yaml_config(config), log=RunLog(out / "log.txt"))
        seconds = time.time() - began
        first = first or out
        sora = json.loads((out / "sora" / "retention.json").read_text())
        row = sora["forgetting"]["doica"]
        rows[name] = {"doica_before": row["eval_loss_before"], "doica_after": row["eval_loss_after"],
                      "change": row["change"], "sora_own": sora["after"]["sora"]["eval_loss"],
                      "seconds": round(seconds, 1)}
        print(name, rows[name], flush=True)
    print("| sora retention | Doica holdout before -> after Sora | change | Sora holdout | time |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['doica_before']:.4f} -> {r['doica_after']:.4f} | {r['change']:+.1%} | "
              f"{r['sora_own']:.4f} | {r['seconds']:.0f} s |")
    if args.out:
        args.out.write_text(json.dumps({"variants": {n: VARIANTS[n] for n in chosen}, "results": rows}, indent=2)
                            + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
