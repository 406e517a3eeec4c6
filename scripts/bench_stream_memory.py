"""Memory of data preparation with and without data.streaming, side by side in one invocation.

Writes N synthetic chats (about 1.8 KB each), then prepares them twice in fresh processes, once with
``data.streaming: true`` and a given ``stream_buffer_mb``, once in memory, and reports how much the
process's own memory (RssAnon: not the page cache of memory-mapped files) grew at its peak, sampled
every 5 ms, over a warm-up that already loaded the libraries. Linux only (reads /proc).

    .venv/bin/python scripts/bench_stream_memory.py                    # 20,000 chats, 8 MiB buffer
    .venv/bin/python scripts/bench_stream_memory.py --records 100000 --buffer-mb 64 --model models/smollm2-135m-instruct

Figures: docs/data.md, "Streaming: data larger than memory".
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, threading, time
from transformers import AutoTokenizer
from nova.config.data_schema import DataConfig, DatasetSpec
from nova.data import prepare_stage_data

def anonymous_mb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024

model, data, warm, cache, streaming, buffer_mb = sys.argv[1:7]
tok = AutoTokenizer.from_pretrained(model, local_files_only=True)
prepare_stage_data(DataConfig(datasets=[DatasetSpec(path=warm)], cache_dir=cache + "-warm", eval_split=0.0), tok,
                   method="sft", seed=1)  # the libraries' pools and caches as a run has them
peak, done = [0.0], []
def sample():
    while not done:
        peak[0] = max(peak[0], anonymous_mb())
        time.sleep(0.005)
before = anonymous_mb()
threading.Thread(target=sample, daemon=True).start()
started = time.perf_counter()
cfg = DataConfig(datasets=[DatasetSpec(path=data)], cache_dir=cache, eval_split=0.1, streaming=streaming == "1",
                 stream_buffer_mb=int(buffer_mb))
out = prepare_stage_data(cfg, tok, method="sft", seed=1)
done.append(1)
print(json.dumps({"grown_mb": round(peak[0] - before, 1), "seconds": round(time.perf_counter() - started, 1),
                  "records": out.report.train_records + out.report.eval_records}))
"""


def chat(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"question {i} " + "lorem ipsum " * 60},
                         {"role": "assistant", "content": f"answer {i} " + "dolor sit " * 100}]}


def measure(model: Path, records: int, buffer_mb: int, work: Path) -> dict:
    """{"size_mb", "streaming": {...}, "in_memory": {...}} for ``records`` chats in ``work``."""
    data = work / "chats.jsonl"
    with data.open("w", encoding="utf-8") as fh:
        for i in range(records):
            fh.write(json.dumps(chat(i)) + "\n")
    warm = work / "warm.jsonl"
    warm.write_text("".join(json.dumps(chat(i)) + "\n" for i in range(500)), encoding="utf-8")
    out: dict = {"size_mb": round(data.stat().st_size / 2**20, 1), "records": records, "buffer_mb": buffer_mb}
    for name, flag in (("streaming", "1"), ("in_memory", "0")):
        argv = [str(model), str(data), str(warm), str(work / f"cache-{name}"), flag, str(buffer_mb)]
        run = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, check=True)
        out[name] = json.loads(run.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--buffer-mb", type=int, default=8)
    parser.add_argument("--model", default=None, help="tokenizer's model directory (default: the tiny test one)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nova-stream-mem-"))
    try:
        model = Path(args.model) if args.model else work / "tiny"
        if args.model is None:
            sys.path.insert(0, str(ROOT / "tests"))
            from tiny_model import build_tiny_model

            build_tiny_model(model)
        result = measure(model, args.records, args.buffer_mb, work)
        print(json.dumps(result))
        print(f"{result['records']} chats, {result['size_mb']} MB, buffer {args.buffer_mb} MiB: streaming grew "
              f"{result['streaming']['grown_mb']} MiB in {result['streaming']['seconds']} s, in memory "
              f"{result['in_memory']['grown_mb']} MiB in {result['in_memory']['seconds']} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
