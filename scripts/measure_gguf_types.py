"""Size and holdout perplexity of every GGUF type nova exports, measured with llama.cpp itself.

    .venv/bin/python scripts/measure_gguf_types.py [--model models/smollm2-135m-instruct] [--out DIR]

Exports the model once per type (f16, q8_0, q6_k, q5_k_m, q4_k_m, q4_0; f32 with --f32), loads
each file with llama.cpp (nova.export.llama_cpp, the xllamacpp wheel) and computes perplexity on a
fixed holdout: the last 12 chats of data/sora_en.jsonl rendered with the chat template, and the
last 12 records of data/rrt_ro_text.jsonl (Romanian text), each cut to 512 tokens. transformers'
fp32 perplexity on the same tokens is the reference. Prints a markdown table (the one in
docs/export.md) and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TYPES = ("f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0")
MAX_TOKENS = 512


def holdout(tok: Any) -> list[list[int]]:
    """Token ids of the fixed holdout (chat records rendered with the template, then raw text records)."""
    chats = [json.loads(line)["messages"] for line in (ROOT / "data" / "sora_en.jsonl").read_text().splitlines()]
    texts = [json.loads(line)["text"] for line in (ROOT / "data" / "rrt_ro_text.jsonl").read_text().splitlines()]
    rendered = [tok.apply_chat_template(m, tokenize=False) for m in chats[-12:]]
    ids = [tok(t, add_special_tokens=False).input_ids for t in rendered]
    ids += [tok(t).input_ids for t in texts[-12:]]
    return [x[:MAX_TOKENS] for x in ids]


def hf_perplexity(model_dir: Path, sequences: list[list[int]]) -> float:
    import math

    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in sequences:
            x = torch.tensor([ids])
            logits = model(input_ids=x).logits[0, :-1].double()
            total += float(torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum"))
            count += len(ids) - 1
    return math.exp(total / count)


def measure(model_dir: Path, out: Path, types: tuple[str, ...]) -> list[dict[str, Any]]:
    import gguf
    from transformers import AutoTokenizer

    from nova.export import llama_cpp
    from nova.export.gguf_export import export_gguf

    sequences = holdout(AutoTokenizer.from_pretrained(str(model_dir)))
    rows = [{"type": "transformers fp32", "ppl": hf_perplexity(model_dir, sequences),
             "tokens": sum(len(s) - 1 for s in sequences)}]
    for outtype in types:
        path = out / f"{model_dir.name}-{outtype}.gguf"
        started = time.monotonic()
        result = export_gguf(model_dir, path, outtype=outtype, force=True)
        seconds = time.monotonic() - started
        runner = llama_cpp.load(path, n_ctx=MAX_TOKENS)
        try:
            ppl = llama_cpp.perplexity(runner, sequences)
        finally:
            runner.close()
        kinds: dict[str, int] = {}
        for tensor in gguf.GGUFReader(str(path)).tensors:
            kinds[tensor.tensor_type.name] = kinds.get(tensor.tensor_type.name, 0) + 1
        rows.append({"type": outtype, "bytes": result.size_bytes, "ppl": ppl, "export_s": round(seconds, 1),
                     "tensors": kinds})
        path.unlink()
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    ref = next(r["ppl"] for r in rows if r["type"] == "f16")
    lines = ["| type | size | perplexity (llama.cpp) | vs f16 | tensors | export time |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "bytes" not in r:
            lines.append(f"| {r['type']} (reference) | - | {r['ppl']:.3f} | {r['ppl'] / ref - 1:+.2%} | - | - |")
            continue
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(r["tensors"].items()))
        lines.append(f"| {r['type']} | {r['bytes'] / 2**20:.1f} MiB | {r['ppl']:.3f} | {r['ppl'] / ref - 1:+.2%} | "
                     f"{kinds} | {r['export_s']} s |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "smollm2-135m-instruct")
    parser.add_argument("--out", type=Path, default=Path("/tmp/nova-gguf-types"))
    parser.add_argument("--f32", action="store_true", help="also measure f32 (a 4-bytes-per-weight file)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here as JSON")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = measure(args.model, args.out, (("f32",) if args.f32 else ()) + TYPES)
    print(f"holdout: {rows[0]['tokens']} predicted tokens")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
