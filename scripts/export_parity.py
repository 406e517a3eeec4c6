"""Measure what `nova export --run` ships: next-token agreement of each GGUF type with the trained model.

For a finished run (a QLoRA chain, e.g. the demo's sora), on the run's held-out chats and smoke
prompts: the trained composition (quantized base + adapters, as training and `nova infer` run it)
is the reference; for every GGUF type the base is written from the dequantized trained-on weights
(what `--from dequantized`, the default, ships) and run by llama.cpp with the chain's GGUF LoRA; the
same with the ORIGINAL base weights (`--from original`) shows what shipping the wrong base costs.
The figures set the thresholds in nova/export/parity.py and the table in docs/export.md.

    .venv/bin/python scripts/export_parity.py --run checkpoints/demo/sora --out docs/export-parity.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

TYPES = ("f32", "f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished run directory (QLoRA)")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    parser.add_argument("--types", default=",".join(TYPES))
    args = parser.parse_args()

    from nova.export.gguf_export import check_supported, write_gguf
    from nova.export.gguf_lora import write_lora_gguf
    from nova.export.parity import compare, llama_cpp_logits
    from nova.export.peft_chain import combine
    from nova.export.run_source import full_precision_base, open_run, trained_logits

    say = print
    run = open_run(args.run)
    started = time.monotonic()
    trained, weights = trained_logits(run, True, say)
    combined = combine(run.inputs.adapters)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("dequantized", "original"):
            base = full_precision_base(run, dict(weights) if kind == "dequantized" else {}, say)
            spec = check_supported(base.config)
            lora = Path(tmp) / f"{kind}-lora.gguf"
            write_lora_gguf(lora, combined, base.config, spec, "f16", "lora")
            for outtype in args.types.split(","):
                path = Path(tmp) / f"{kind}-{outtype}.gguf"
                write_gguf(path, base, run.tokenizer, spec, outtype, "base", [])
                agreement, diff, tokens = compare(trained, llama_cpp_logits(path, run.batches, lora=lora))
                rows.append({"base": kind, "outtype": outtype, "agreement": agreement, "max_logit_diff": diff,
                             "tokens": tokens, "sequences": len(run.batches)})
                print(f"{kind:11s} {outtype:7s} agreement {100 * agreement:6.2f}%  max logit diff {diff:8.4f}"
                      f"  ({tokens} positions)")
                path.unlink()
            del base
    result = {"run": str(args.run), "reference": f"trained composition ({run.inputs.model_cfg.quantization}, "
              "computed in fp32)", "rows": rows, "seconds": round(time.monotonic() - started, 1)}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
