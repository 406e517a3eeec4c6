"""How long ``nova eval`` takes per task on a model: the figures in docs/eval.md.

    python scripts/bench_eval.py --model models/smollm2-135m-instruct --limit 50 --quantization nf4

Loads the model as a run's composition loads it (``nova.infer.load_model``, nf4 or unquantized), then
scores each task once, timing only the scoring (the model load is printed apart). The load average
is printed before and after: on a shared machine other work slows every wall-clock figure, so the
process's CPU time is printed too (torch uses every core: on an idle machine the wall time is about
the CPU time divided by the cores).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/smollm2-135m-instruct"))
    parser.add_argument("--tasks", default="xquad_ro,hellaswag,gsm8k")
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--quantization", default="nf4", choices=["nf4", "none"])
    args = parser.parse_args()

    from nova.eval.backend import HFBackend
    from nova.eval.score import Prompter, score
    from nova.eval.tasks import Task, resolve
    from nova.infer import load_model

    print(f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f} before")
    start = time.monotonic()
    loaded = load_model(args.model, quantization=args.quantization)
    print(f"model {args.model} ({args.quantization}) loaded in {time.monotonic() - start:.1f} s")
    backend = HFBackend(loaded.model, loaded.tokenizer)
    prompter = Prompter(loaded.tokenizer, None)
    for task in resolve(args.tasks.split(","), args.limit, None):
        assert isinstance(task, Task)
        start, cpu = time.monotonic(), time.process_time()
        value = score(task, backend, prompter)
        took, used = time.monotonic() - start, time.process_time() - cpu
        print(f"{task.name}: {task.count} items ({task.kind}), score {value:.3f}, {took:.1f} s wall, "
              f"{used:.1f} s CPU, load average {os.getloadavg()[0]:.2f}")
    print(f"load average {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()
