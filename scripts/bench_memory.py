"""nova's own memory, measured: ``nova train --probe`` over a grid, the estimate beside the measured peak.

Each row is a one-stage config run by the real command (``python -m nova train --config X --probe
--json``) in a fresh process: SmolLM2-135M with its real weights, and 1-2B architectures built from
their shipped config.json (src/nova/resources/model_configs/) with random weights (weights change
neither memory nor the code path) and SmolLM2's tokenizer. The data is synthetic, every row as long
as the row's sequence length, so the worst micro batch is micro batch x seq tokens. The probe runs
on the device it finds: this CPU (peak of torch's CPU allocator from the profiler's memory events),
or a CUDA GPU (max_memory_reserved plus memory outside torch's pool); scripts/gpu_check.py runs the
same grid on a GPU. Rows are appended to OUT/rows.jsonl as they finish (a long grid can be stopped
and resumed: rows already there are skipped); ``--table`` prints them as docs/memory.md's table.

    python scripts/bench_memory.py --out /tmp/mem [--rows smol-sft-none-512x4-nogc-free,...] [--grid cpu|gpu]
    python scripts/bench_memory.py --out /tmp/mem --table
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "src" / "nova" / "resources" / "model_configs"
SMOL = ROOT / "models" / "smollm2-135m-instruct"
RANDOM = {"llama1b": "Llama-3.2-1B", "qwen15b": "Qwen2.5-1.5B"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
MiB = 1024**2


@dataclass(frozen=True)
class Row:
    """One probe of the grid."""

    model: str  # smol, llama1b, qwen15b
    method: str  # sft, dpo
    quant: str  # none, nf4
    seq: int
    micro: int
    checkpointing: bool
    packing: str = "auto"  # auto (padding-free where exact) or pad

    @property
    def name(self) -> str:
        return (f"{self.model}-{self.method}-{self.quant}-{self.seq}x{self.micro}-"
                f"{'gc' if self.checkpointing else 'nogc'}-{'free' if self.packing == 'auto' else 'pad'}")


def cpu_grid() -> list[Row]:
    """The rows a 2-core CPU affords in about an hour, most informative first (docs/memory.md says why)."""
    r = Row
    return [
        r("smol", "sft", "none", 512, 4, False), r("smol", "sft", "none", 128, 1, False),
        r("smol", "sft", "none", 128, 1, True), r("smol", "sft", "nf4", 128, 1, False),
        r("smol", "dpo", "none", 128, 1, False), r("llama1b", "sft", "none", 128, 1, False),
        r("qwen15b", "sft", "none", 128, 1, True, "pad"), r("smol", "sft", "none", 128, 2, False, "pad"),
        r("llama1b", "sft", "nf4", 128, 1, True), r("qwen15b", "dpo", "nf4", 128, 1, True),
        r("smol", "sft", "none", 1024, 2, True), r("smol", "sft", "none", 4096, 1, True),
    ]


def gpu_grid() -> list[Row]:
    """The CPU rows, then the long and wide ones a GPU affords (the full product of the issue's axes)."""
    rows = list(cpu_grid())
    for model in ("smol", "llama1b", "qwen15b"):
        for quant in ("none", "nf4"):
            for seq in (128, 512, 1024, 4096):
                for micro in (1, 4):
                    for ckpt in (False, True):
                        rows.append(Row(model, "sft", quant, seq, micro, ckpt))
                rows.append(Row(model, "sft", quant, seq, 2, True, "pad"))
                rows.append(Row(model, "dpo", quant, seq, 2, True))
    seen: set[str] = set()
    return [row for row in rows if not (row.name in seen or seen.add(row.name))]  # type: ignore[func-returns-value]


def model_dir(name: str, work: Path) -> Path:
    """SmolLM2 as shipped, or a 1-2B architecture from its config with random bf16 weights (made once)."""
    if name == "smol":
        return SMOL
    out = work / "models" / name
    if (out / "model.safetensors.index.json").exists() or (out / "model.safetensors").exists():
        return out
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(CONFIGS / f"{RANDOM[name]}.json")
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
    model.save_pretrained(out)
    for file in TOKENIZER_FILES:  # token ids of SmolLM2's tokenizer are all inside the larger vocabularies
        if (SMOL / file).exists():
            shutil.copy(SMOL / file, out / file)
    del model
    return out


def write_data(row: Row, work: Path) -> Path:
    """Eight records, each as long as the row's sequence (the tokenizer counts), for the row's method."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(SMOL)
    words = " ".join(f"w{i % 97}" for i in range(8 * row.seq))
    ids = tok(words, add_special_tokens=False)["input_ids"]
    half = row.seq // 2

    def text(n: int, k: int) -> str:
        return tok.decode(ids[k: k + max(n, 1)])

    path = work / "data" / f"{row.method}-{row.seq}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    records = []
    for k in range(8):
        if row.method == "sft":
            records.append({"messages": [{"role": "user", "content": text(16, k)},
                                         {"role": "assistant", "content": text(row.seq, k + 16)}]})
        else:
            records.append({"prompt": [{"role": "user", "content": text(half, k)}],
                            "chosen": text(half, k + 1), "rejected": text(half, k + 2)})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_config(row: Row, work: Path) -> Path:
    """The row as a nova phase config (data cut at the row's length: every row is that long)."""
    data = write_data(row, work)
    half = row.seq // 2
    method = f"\ndpo: {{max_prompt_length: {half}, max_completion_length: {half}}}" if row.method == "dpo" else ""
    text = f"""name: {row.name}
method: {row.method}
model: {{base: {model_dir(row.model, work)}, quantization: {row.quant}}}
lora: {{r: 16, alpha: 32, dropout: 0.05}}
data: {{datasets: [{{path: {data}}}], eval_split: 0.0, max_length: {row.seq}, cache_dir: {work / "cache"}}}{method}
training: {{max_steps: 100, micro_batch_size: {row.micro}, gradient_accumulation_steps: 1, warmup_steps: 0,
  gradient_checkpointing: {str(row.checkpointing).lower()}, packing: {row.packing}}}
output_dir: {work / "runs" / row.name}
logs_dir: {work / "logs"}
"""
    path = work / "configs" / f"{row.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def run_row(row: Row, work: Path, steps: int, timeout: int) -> dict:
    """One probe in a fresh process through the real command; its stage's figures, or why it failed.
    A probe whose report is already in WORK/probes (a grid stopped mid-way) is read, not run again."""
    config = write_config(row, work)
    out = work / "probes" / f"{row.name}.json"
    if out.exists():
        return {"row": row.name, **row.__dict__, **json.loads(out.read_text())["stages"][0], "config": str(config)}
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "NOVA_CACHE_DIR": str(work / "nova-cache"),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "nova", "train", "--config", str(config), "--probe", "--probe-steps", str(steps),
           "--probe-out", str(out), "--json"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"row": row.name, "error": f"timed out after {timeout} s"}
    if not out.exists():
        return {"row": row.name, "error": (done.stderr or done.stdout)[-600:]}
    stage = json.loads(out.read_text())["stages"][0]
    return {"row": row.name, **row.__dict__, **stage, "config": str(config)}


def estimate_now(result: dict) -> int | None:
    """The estimate of a measured row by the estimator as it is now (its terms corrected since the row ran):
    the row's stage as preflight sizes it, at the longest row the probe trained."""
    sys.path.insert(0, str(ROOT / "src"))
    from dataclasses import replace

    from nova.config import load_yaml_config
    from nova.plan import make_plan
    from nova.preflight.checks_memory import planned_settings
    from nova.preflight.estimate import CALIBRATED, estimate_for_shape, model_shape

    if not result.get("config") or not result.get("longest_row_tokens"):
        return None
    planned = make_plan(load_yaml_config(Path(result["config"]))).phases[0]
    shape = model_shape(json.loads((Path(str(planned.model.base)) / "config.json").read_text()))
    settings = planned_settings(shape, planned, planned.stages[0], on_gpu=result.get("device") == "cuda")
    seq = min(settings.seq_len, result["longest_row_tokens"])
    loss = None if settings.loss_tokens is None else min(settings.loss_tokens, settings.sequences * seq)
    trained = result.get("trained_tokens") or trained_tokens(result)
    if trained:
        loss = min(trained, settings.sequences * seq)
    settings = replace(settings, seq_len=seq, loss_tokens=loss,
                       attention_row=None if settings.attention_row is None else seq)
    return estimate_for_shape(shape, settings, CALIBRATED).total_bytes


def trained_tokens(result: dict) -> int | None:
    """Trained tokens of a row probed before the probe reported them: its data's worst rows, tokenized again."""
    sys.path.insert(0, str(ROOT / "src"))
    from nova.config import load_yaml_config
    from nova.data import prepare_stage_data
    from nova.model.loading import load_tokenizer, resolve_base
    from nova.plan import make_plan

    planned = make_plan(load_yaml_config(Path(result["config"]))).phases[0]
    cfg = planned.stages[0].config
    tokenizer = load_tokenizer(planned.model, resolve_base(planned.model))
    data = prepare_stage_data(cfg.data, tokenizer, method=cfg.method, seed=cfg.training.seed, dpo=cfg.length_settings)
    from nova.train.probe import worst_rows

    return worst_rows(data.train, cfg.training.micro_batch_size, 1)[2]  # trained positions of the worst rows


def device_line() -> str:
    """The device the probes ran on, in words (CPU model and cores, or the GPU's name)."""
    import torch

    if torch.cuda.is_available():
        return f"CUDA: {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    sys.path.insert(0, str(ROOT / "src"))
    from nova.system import cpu_description, usable_cores

    return f"CPU: {cpu_description()[0]} ({usable_cores()} cores, {platform.machine()}), torch {torch.__version__}"


def table(rows: list[dict]) -> str:
    """docs/memory.md's rows: the row, estimate, measured, error, tokens/s."""
    lines = ["| row | estimate MiB | measured MiB | error | tokens/s |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("error") and not isinstance(r.get("error"), float):
            lines.append(f"| {r['row']} | - | - | failed: {str(r['error']).splitlines()[-1][:80]} | - |")
            continue
        est, got = estimate_now(r) or r.get("estimated_peak_bytes"), r.get("measured_peak_bytes")
        err = "-" if not est or not got else f"{(est - got) / got:+.1%}"
        speed = "-" if r.get("tokens_per_second") is None else f"{r['tokens_per_second']:.0f}"
        lines.append(f"| {r['row']} | {'-' if not est else round(est / MiB)} | {'-' if not got else round(got / MiB)} "
                     f"| {err} | {speed} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "nova-bench-memory")
    parser.add_argument("--grid", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--rows", default="", help="comma-separated row names (default: the whole grid)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per row")
    parser.add_argument("--time-budget-s", type=float, default=None, help="start no row after this many seconds")
    parser.add_argument("--table", action="store_true", help="print the table of OUT/rows.jsonl and stop")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "rows.jsonl"
    done = [json.loads(x) for x in results.read_text().splitlines()] if results.exists() else []
    if args.table:
        print(table(done))
        return 0
    grid = cpu_grid() if args.grid == "cpu" else gpu_grid()
    wanted = {x for x in args.rows.split(",") if x}
    finished = {r["row"] for r in done if "measured_peak_bytes" in r}
    (args.out / "device.txt").write_text(device_line() + "\n")
    started = time.monotonic()
    for row in grid:
        if (wanted and row.name not in wanted) or row.name in finished:
            continue
        if args.time_budget_s is not None and time.monotonic() - started > args.time_budget_s:
            print(f"time budget spent; {row.name} and the rows after it not run", flush=True)
            break
        result = run_row(row, args.work, args.steps, args.timeout)
        with results.open("a") as f:
            f.write(json.dumps(result) + "\n")
        print(table([result]).splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
