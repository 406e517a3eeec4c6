"""GPU kit: measure nova's real training path on CUDA and compare it with ``nova preflight``'s estimate.

Nothing is downloaded. Each architecture is built from its full config.json
(src/nova/resources/model_configs/) with random weights directly on the GPU (weights change
neither memory nor speed), its decoder linears quantized to nf4 by bitsandbytes' CUDA kernels as
transformers does it, and each case of the grid trains a fresh LoRA adapter for a few steps on
synthetic tokens through nova's own trainers (nova.train.methods: nova's loss, padding-free
batches, TRL's DPO). Per case it records torch.cuda.max_memory_reserved() / max_memory_allocated(),
the memory outside torch's pool (CUDA context), tokens/s, nova's estimate for the same stage, and
preflight's verdict for a 24 GiB card beside whether the measured peak would have fit one. Then it
runs one end-to-end case with the real CLI (nova train, the plain TRL baseline of
scripts/baseline_trl_sft.py on the same model and data, nova merge, nova export).

    python scripts/gpu_check.py --out OUT [--work DIR] [--max-gib 139] [--view-gib 24] [--time-budget-s 300]
                                [--no-grid | --no-e2e]
    python scripts/gpu_check.py --dry-run --out /tmp/kit     # CPU, tiny shapes (the CI test)

Output: OUT/gpu_check.json (written after every case), OUT/memory_rows.md (rows for docs/memory.md)
and OUT/speed_rows.md (rows for docs/benchmarks.md). See README "GPU kit" for the device command.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the device machine runs from the working tree, nova not installed

CONFIGS = ROOT / "src" / "nova" / "resources" / "model_configs"
GiB = 1024**3


@dataclass(frozen=True)
class Case:
    """One training configuration of the grid."""

    model: str
    seq_len: int
    micro_batch: int = 1
    checkpointing: bool = True
    lora_r: int = 16
    method: str = "sft"
    attn: str = "sdpa"
    packing: str = "auto"

    @property
    def name(self) -> str:
        gc_flag = "gc" if self.checkpointing else "nogc"
        return (f"{self.model}-{self.method}-{self.micro_batch}x{self.seq_len}-{gc_flag}-r{self.lora_r}"
                f"-{self.attn}-{self.packing}")


def full_grid() -> list[Case]:
    """Most telling first: nova's defaults on 7-8B models from 512 to 8192 tokens, then the other levers."""
    big = ("Llama-3.1-8B", "Qwen2.5-7B", "Mistral-7B-v0.3")
    cases = [Case(m, n) for m in big for n in (512, 2048, 8192)]
    cases += [Case("Qwen2.5-1.5B", n) for n in (512, 2048, 8192)]
    cases += [Case(m, 2048, micro_batch=4) for m in big[:2]]
    cases += [Case(m, 1024, micro_batch=2, checkpointing=False) for m in big[:2]]
    cases += [Case(m, 2048, lora_r=64) for m in big[:2]]
    cases += [Case("Qwen2.5-7B", 1024, micro_batch=8), Case("Qwen2.5-7B", 1024, micro_batch=8, packing="pad")]
    cases += [Case("Qwen2.5-1.5B", 4096, micro_batch=2, checkpointing=False),
              Case("Qwen2.5-1.5B", 2048, attn="eager"), Case("Qwen2.5-1.5B", 16384)]
    cases += [Case("Llama-3.1-8B", 1024, micro_batch=2, method="dpo"), Case("Qwen2.5-1.5B", 2048, method="dpo")]
    return cases


def dry_grid() -> list[Case]:
    """The same code paths at tiny sizes, for a CPU run in CI."""
    return [Case("Llama-3.1-8B", 64, micro_batch=2), Case("Qwen2.5-1.5B", 64, checkpointing=False),
            Case("Qwen2.5-1.5B", 32, micro_batch=4, packing="pad"), Case("Mistral-7B-v0.3", 64, attn="eager"),
            Case("Llama-3.1-8B", 48, micro_batch=2, method="dpo")]


def model_config(name: str, dry_run: bool) -> dict[str, Any]:
    """The shipped config.json; for a dry run the same architecture shrunk to a few hundred kB."""
    config = json.loads((CONFIGS / f"{name}.json").read_text(encoding="utf-8"))
    if dry_run:
        config.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=1024, head_dim=16, max_position_embeddings=512)
    return config


def build_quantized(config: dict[str, Any], attn: str, device: str, dtype: Any, quant: str = "nf4") -> Any:
    """A random-weight model of this architecture on ``device`` with nf4 decoder linears, marked as
    transformers marks a bitsandbytes 4-bit model (so PEFT and the Trainer treat it the same)."""
    import torch
    import transformers
    from transformers.quantizers.auto import AutoHfQuantizer
    from transformers.utils.quantization_config import QuantizationMethod

    from nova.config.schema import ModelConfig
    from nova.model.loading import quantization_config

    cfg = dict(config)
    hf_config = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=dtype, attn_implementation=attn)
    bnb_config = quantization_config(ModelConfig(base="gpu-kit", quantization=quant), dtype)
    _quantize_linears(model, bnb_config, device)
    model.hf_quantizer = AutoHfQuantizer.from_config(bnb_config, pre_quantized=False)
    model.quantization_method = QuantizationMethod.BITS_AND_BYTES
    model.is_loaded_in_4bit = True
    model.config.quantization_config = bnb_config
    if device == "cpu":
        from nova.model.loading import keep_cpu_4bit_differentiable

        keep_cpu_4bit_differentiable(model)
    return model


def _quantize_linears(model: Any, bnb_config: Any, device: str) -> None:
    """Replace every decoder nn.Linear by a bitsandbytes Linear4bit holding the same weight, quantized."""
    import bitsandbytes as bnb
    import torch

    dtype = bnb_config.bnb_4bit_compute_dtype
    for module in list(model.model.layers.modules()):
        for name, child in list(module.named_children()):
            if not isinstance(child, torch.nn.Linear):
                continue
            new = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                    compute_dtype=dtype, compress_statistics=bnb_config.bnb_4bit_use_double_quant,
                                    quant_type=bnb_config.bnb_4bit_quant_type, device="meta")
            new.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False,
                                           compress_statistics=bnb_config.bnb_4bit_use_double_quant,
                                           quant_type=bnb_config.bnb_4bit_quant_type, module=new).to(device)
            if child.bias is not None:
                new.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            setattr(module, name, new)
            del child


def stage_for(case: Case, steps: int) -> Any:
    """The stage config nova would run for this case (one micro batch per optimizer step)."""
    from nova.config.data_schema import DataConfig
    from nova.config.schema import StageConfig, TrainingConfig
    from nova.methods.dpo import DPOConfig

    training = TrainingConfig(micro_batch_size=case.micro_batch, gradient_accumulation_steps=1, max_steps=steps,
                              gradient_checkpointing=case.checkpointing, packing=case.packing, logging_steps=1,
                              save_steps=10**6, eval_steps=10**6, warmup_steps=0, learning_rate=1e-4)
    half = max(case.seq_len // 2, 1)
    return StageConfig(method=case.method, data=DataConfig(max_length=case.seq_len), training=training,  # type: ignore[arg-type]
                       dpo=DPOConfig(max_prompt_length=half, max_completion_length=case.seq_len - half))


def synthetic_data(case: Case, vocab: int, count: int) -> Any:
    """Random token sequences of exactly the case's length, every position trained (the worst case)."""
    import random
    from types import SimpleNamespace

    from datasets import Dataset

    rng = random.Random(0)

    def seq(n: int) -> list[int]:
        return [rng.randrange(3, vocab) for _ in range(n)]

    if case.method == "dpo":
        half = case.seq_len // 2
        rows = {"prompt_ids": [seq(half) for _ in range(count)],
                "chosen_ids": [seq(case.seq_len - half) for _ in range(count)],
                "rejected_ids": [seq(case.seq_len - half) for _ in range(count)]}
    else:
        ids = [seq(case.seq_len) for _ in range(count)]
        rows = {"input_ids": ids, "labels": [list(i) for i in ids]}
    return SimpleNamespace(train=Dataset.from_dict(rows), eval=None)


def nova_estimate(config: dict[str, Any], case: Case, stage: Any, on_gpu: bool, view_gib: float) -> dict[str, Any]:
    """What nova preflight says for this stage, and its verdict for a card of ``view_gib``."""
    from nova.config.schema import LoraConfig, ModelConfig
    from nova.preflight.checks_memory import stage_settings
    from nova.preflight.estimate import CALIBRATED, estimate_for_shape, model_shape

    model_cfg = ModelConfig(base="gpu-kit", attn_implementation=case.attn)  # type: ignore[arg-type]
    lora = LoraConfig(r=case.lora_r, alpha=2 * case.lora_r)
    est = estimate_for_shape(model_shape(config), stage_settings(model_cfg, lora, stage, on_gpu=on_gpu), CALIBRATED)
    card = view_gib * GiB
    verdict = "pass" if est.upper_bytes <= card else ("warn" if est.total_bytes <= card else "fail")
    return {"total_bytes": est.total_bytes, "reserved_bytes": est.reserved_bytes,
            "allocated_bytes": est.allocated_bytes, "upper_bytes": est.upper_bytes, "uncertainty": est.uncertainty,
            "breakdown": est.breakdown, "view_gib": view_gib, "verdict": verdict}


class StepTimer:
    """Wall time of each optimizer step (synchronized on CUDA), as a Trainer callback."""

    def __init__(self, cuda: bool) -> None:
        import transformers

        self.cuda, self.times, self._start = cuda, [], 0.0

        class _Callback(transformers.TrainerCallback):
            def on_step_begin(cb, *args: Any, **kwargs: Any) -> None:
                self._sync()
                self._start = time.perf_counter()

            def on_step_end(cb, *args: Any, **kwargs: Any) -> None:
                self._sync()
                self.times.append(time.perf_counter() - self._start)

        self.callback = _Callback()

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()


def train_case(base: Any, tokenizer: Any, case: Case, vocab: int, steps: int, work: Path,
               device: str) -> dict[str, Any]:
    """Train a fresh adapter for ``steps`` steps through nova's trainers; the peak memory and step times."""
    import torch

    from nova.config.schema import LoraConfig
    from nova.model.adapters import add_trainable, keep_trainable_fp32
    from nova.model.loading import Placement
    from nova.model.trained import StageReference
    from nova.train.machinery.resilience import StopRequest
    from nova.train.methods.common import TrainerHooks, TrainerInputs
    from nova.train.methods.dpo import build_dpo_trainer
    from nova.train.methods.sft import build_sft_trainer

    cuda = device == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    placement = Placement(device, dtype, 0)
    stage = stage_for(case, steps)
    data = synthetic_data(case, vocab, count=steps * case.micro_batch)
    timer = StepTimer(cuda)
    hooks = TrainerHooks(output_dir=work / "out", placement=placement, metrics_path=work / "metrics.jsonl",
                         stage_name=case.method, label=case.name, stop=StopRequest(), extra_callbacks=[timer.callback])
    model = add_trainable(base, LoraConfig(r=case.lora_r, alpha=2 * case.lora_r), ())
    try:
        with keep_trainable_fp32(model):  # as nova.train.stage builds every trainer
            inputs = TrainerInputs(model, tokenizer, stage, data, hooks, StageReference(), print)
            trainer = (build_dpo_trainer if case.method == "dpo" else build_sft_trainer)(inputs)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
        result: dict[str, Any] = {"step_seconds": timer.times, "tokens_per_step": case.micro_batch * case.seq_len * (
            2 if case.method == "dpo" else 1)}
        if cuda:
            free, total = torch.cuda.mem_get_info()
            result.update(max_reserved=torch.cuda.max_memory_reserved(),
                          max_allocated=torch.cuda.max_memory_allocated(),
                          outside_torch=(total - free) - torch.cuda.memory_reserved(), device_total=total)
        return result
    finally:
        trainer = None  # drop the optimizer and the graph before the next case
        model.unload()  # the base without LoRA layers (PEFT injected them in place)
        base.gradient_checkpointing_disable()  # the Trainer enabled it; the next case decides again


def tokens_per_second(measured: dict[str, Any]) -> float | None:
    """Over the steps after the first (which pays for kernel selection and the optimizer's states)."""
    times = measured.get("step_seconds", [])[1:]
    return measured["tokens_per_step"] * len(times) / sum(times) if times else None


def compare(record: dict[str, Any]) -> dict[str, Any]:
    """Estimate vs measurement: relative errors and whether the verdict for the view card was right."""
    est, got = record["estimate"], record["measured"]
    if "max_reserved" not in got:
        return {}
    total = got["max_reserved"] + got["outside_torch"]
    fits = total <= record["estimate"]["view_gib"] * GiB
    verdict_ok = (est["verdict"] == "pass" and fits) or (est["verdict"] != "pass" and not fits) or (
        est["verdict"] == "warn" and fits)
    return {"error_reserved": est["reserved_bytes"] / got["max_reserved"] - 1,
            "error_allocated": est["allocated_bytes"] / got["max_allocated"] - 1,
            "error_total": est["total_bytes"] / total - 1, "measured_total": total, "fits_view": fits,
            "verdict_ok": verdict_ok}


def run_grid(args: argparse.Namespace, out: dict[str, Any], save: Any) -> None:
    """Every case of the grid that the budget and --max-gib allow, one model build per architecture."""
    import torch

    from nova.preflight.checks_memory import stage_settings  # noqa: F401  (fail early if nova is broken)

    device = "cpu" if args.dry_run else "cuda"
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    tokenizer = build_tokenizer(args.work / "tokenizer")
    cases = dry_grid() if args.dry_run else full_grid()
    started = time.perf_counter()
    for model_name in dict.fromkeys(c.model for c in cases):
        config = model_config(model_name, args.dry_run)
        mine = [c for c in cases if c.model == model_name]
        for attn in dict.fromkeys(c.attn for c in mine):
            if time.perf_counter() - started > args.time_budget_s:
                break
            base = build_quantized(config, attn, device, dtype)
            base.enable_input_require_grads()  # as nova.train.phase does: checkpointed blocks need it
            for case in (c for c in mine if c.attn == attn):
                out["cases"].append(_one_case(args, base, tokenizer, case, config, started))
                save()
            del base
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()


def _one_case(args: argparse.Namespace, base: Any, tokenizer: Any, case: Case, config: dict[str, Any],
              started: float) -> dict[str, Any]:
    import torch

    record: dict[str, Any] = {"case": asdict(case), "name": case.name}
    record["estimate"] = nova_estimate(config, case, stage_for(case, args.steps), not args.dry_run, args.view_gib)
    if record["estimate"]["upper_bytes"] > args.max_gib * GiB:
        record["skipped"] = f"estimate above --max-gib {args.max_gib}"
        return record
    if time.perf_counter() - started > args.time_budget_s:
        record["skipped"] = "time budget spent"
        return record
    work = args.work / "runs" / case.name
    try:
        record["measured"] = train_case(base, tokenizer, case, config["vocab_size"], args.steps, work,
                                        "cpu" if args.dry_run else "cuda")
    except torch.OutOfMemoryError as exc:
        record["measured"] = {"oom": str(exc).splitlines()[0]}
    except Exception as exc:  # one broken case must not cost the rest of a lease: record it, go on
        import traceback

        record["measured"] = {"error": f"{type(exc).__name__}: {exc}"[:500],
                              "traceback": traceback.format_exc()[-2000:]}
    if "step_seconds" not in record["measured"]:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    record["measured"]["tokens_per_second"] = tokens_per_second(record["measured"]) if "step_seconds" in record[
        "measured"] else None
    record["comparison"] = compare(record)
    print(_line(record), flush=True)
    return record


def _line(r: dict[str, Any]) -> str:
    got, cmp_ = r.get("measured", {}), r.get("comparison", {})
    if "oom" in got:
        return f"{r['name']}: OOM (estimate {r['estimate']['total_bytes'] / GiB:.1f} GiB)"
    if "error" in got:
        return f"{r['name']}: FAILED {got['error']}"
    if not cmp_:
        return f"{r['name']}: ran (no CUDA counters), estimate {r['estimate']['total_bytes'] / GiB:.2f} GiB"
    est = r["estimate"]
    return (f"{r['name']}: reserved {got['max_reserved'] / GiB:.2f} GiB, estimate {est['reserved_bytes'] / GiB:.2f}"
            f" ({cmp_['error_reserved']:+.1%}), {got['tokens_per_second'] or 0:.0f} tok/s, {est['view_gib']:g} GiB "
            f"verdict {est['verdict']} ({'ok' if cmp_['verdict_ok'] else 'WRONG'})")


# ---- the end-to-end case: the real CLI on a small model saved to disk ----------------------------

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "while", "memory", "stays", "known",
         "before", "launch", "and", "every", "token", "of", "a", "long", "context", "counts", "twice", "when",
         "logits", "are", "upcast"]


def build_tokenizer(out_dir: Path, vocab_size: int = 600) -> Any:
    """A byte-level BPE tokenizer with a ChatML template, trained here on a few words (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(WORDS)] * 50, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>")
    fast.chat_template = CHATML
    fast.save_pretrained(out_dir)
    return fast


def environment() -> dict[str, Any]:
    """Versions and the device, so every figure says what it was measured on."""
    from importlib import metadata

    import torch

    versions = {}
    for name in ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"versions": versions, "gpu": gpu, "cuda": torch.version.cuda, "python": sys.version.split()[0]}


def _save_small_model(work: Path, dry_run: bool) -> Path:
    """Llama-3.2-1B's architecture (tiny for a dry run) with the kit tokenizer's vocabulary, saved in bf16."""
    import torch
    import transformers

    model_dir = work / "model"
    tok = build_tokenizer(model_dir)
    config = model_config("Llama-3.2-1B", dry_run)
    config.update(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    hf_config = transformers.AutoConfig.for_model(config.pop("model_type"), **config)
    torch.manual_seed(0)
    dtype = torch.float32 if dry_run else torch.bfloat16
    model = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    model.save_pretrained(model_dir)
    return model_dir


def _write_data(work: Path, rows: int, words: int) -> tuple[Path, Path]:
    """The same conversations for nova (messages) and for the TRL baseline (prompt / completion)."""
    import random

    rng = random.Random(0)
    nova_file, trl_file = work / "chat.jsonl", work / "prompt_completion.jsonl"
    with nova_file.open("w", encoding="utf-8") as nf, trl_file.open("w", encoding="utf-8") as tf:
        for i in range(rows):
            question = f"question {i}: " + " ".join(rng.choice(WORDS) for _ in range(8))
            answer = " ".join(rng.choice(WORDS) for _ in range(words))
            user, assistant = {"role": "user", "content": question}, {"role": "assistant", "content": answer}
            nf.write(json.dumps({"messages": [user, assistant]}) + "\n")
            tf.write(json.dumps({"prompt": [user], "completion": [assistant]}) + "\n")
    return nova_file, trl_file


def _cli(args: list[str], cwd: Path, timeout: float) -> dict[str, Any]:
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return {"rc": done.returncode, "seconds": round(time.perf_counter() - start, 1),
            "stdout_tail": done.stdout[-1500:], "stderr_tail": done.stderr[-1500:]}


def end_to_end(work: Path, *, dry_run: bool) -> dict[str, Any]:
    """nova train vs the plain TRL baseline on one case (speed), then nova merge and nova export."""
    work.mkdir(parents=True, exist_ok=True)
    model_dir = _save_small_model(work, dry_run)
    length, batch = (64, 2) if dry_run else (1024, 4)
    nova_data, trl_data = _write_data(work, rows=8 if dry_run else 64, words=length)
    dtype = "fp32" if dry_run else "bf16"
    config = work / "phase.yaml"
    config.write_text(json.dumps({  # JSON is YAML
        "name": "kit", "output_dir": str(work / "run"), "logs_dir": str(work / "logs"),
        "model": {"base": str(model_dir), "quantization": "none", "compute_dtype": dtype},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.05},
        "data": {"datasets": [{"path": str(nova_data)}], "eval_split": 0.0, "max_length": length,
                 "cache_dir": str(work / "cache")},
        "training": {"num_epochs": 1, "micro_batch_size": batch, "gradient_accumulation_steps": 1,
                     "gradient_checkpointing": False, "logging_steps": 1, "save_steps": 1000, "eval_steps": 1000}}))
    out: dict[str, Any] = {"length": length, "micro_batch": batch, "dtype": dtype}
    out["nova_train"] = _cli(["-m", "nova", "train", "--config", str(config)], work, 420)
    out["nova_tokens_per_second"] = _nova_throughput(work / "run" / "metrics.jsonl")
    out["trl_baseline"] = _cli([str(ROOT / "scripts" / "baseline_trl_sft.py"), "--model", str(model_dir), "--data",
                                str(trl_data), "--dtype", dtype, "--quantization", "none", "--micro-batch", str(batch),
                                "--max-length", str(length)], work, 420)
    out["trl_tokens_per_second"] = _trl_throughput(out["trl_baseline"]["stdout_tail"])
    merged = work / "merged"
    out["merge"] = _cli(["-m", "nova", "merge", "--run", str(work / "run"), "--out", str(merged)], work, 420)
    out["export"] = _cli(["-m", "nova", "export", "--model", str(merged), "--format", "gguf", "--out",
                          str(work / "kit.gguf"), "--outtype", "f16"], work, 420)
    return out


def _nova_throughput(metrics: Path) -> float | None:
    """Median tokens/s of nova's logged steps after the first."""
    import statistics

    if not metrics.exists():
        return None
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    values = [r["tokens_per_second"] for r in rows if r.get("tokens_per_second")][1:]
    return statistics.median(values) if values else None


def _trl_throughput(stdout: str) -> float | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{") and '"runner": "trl"' in line:
            data = json.loads(line)
            return data["real_tokens"] / data["seconds"] if data["seconds"] else None
    return None


# ---- report ---------------------------------------------------------------------------------------

def write_rows(out: dict[str, Any], folder: Path) -> None:
    """Markdown rows for docs/memory.md (estimate vs measured) and docs/benchmarks.md (speed)."""
    env = out["environment"]
    lines = [f"Measured with scripts/gpu_check.py on {env['gpu'] or 'CPU (dry run)'}, "
             f"torch {env['versions']['torch']}, transformers {env['versions']['transformers']}, "
             f"bitsandbytes {env['versions']['bitsandbytes']}.", "",
             "| Case | Reserved GiB | Estimate GiB | Error | Allocated GiB | Estimate GiB | Error | Outside torch GiB "
             "| 24 GiB verdict | Right | tok/s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in out["cases"]:
        got, cmp_, est = r.get("measured", {}), r.get("comparison", {}), r["estimate"]
        if not cmp_:
            why = r.get("skipped") or ("OOM" if "oom" in got else "failed" if "error" in got else "no CUDA counters")
            lines.append(f"| {r['name']} | {why} | {est['reserved_bytes'] / GiB:.2f} | | | | | | "
                         f"{est['verdict']} | | |")
            continue
        lines.append(f"| {r['name']} | {got['max_reserved'] / GiB:.2f} | {est['reserved_bytes'] / GiB:.2f} | "
                     f"{cmp_['error_reserved']:+.1%} | {got['max_allocated'] / GiB:.2f} | "
                     f"{est['allocated_bytes'] / GiB:.2f} | {cmp_['error_allocated']:+.1%} | "
                     f"{got['outside_torch'] / GiB:.2f} | {est['verdict']} | {'yes' if cmp_['verdict_ok'] else 'NO'} | "
                     f"{got['tokens_per_second'] or 0:.0f} |")
    (folder / "memory_rows.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    e2e = out.get("end_to_end") or {}
    speed = ["| Run | Tokens/s | Wall s | rc |", "|---|---|---|---|"]
    rates = {"nova_train": e2e.get("nova_tokens_per_second"), "trl_baseline": e2e.get("trl_tokens_per_second")}
    for key, label in (("nova_train", "nova train"), ("trl_baseline", "plain TRL (scripts/baseline_trl_sft.py)"),
                       ("merge", "nova merge"), ("export", "nova export gguf f16")):
        step, rate = e2e.get(key), rates.get(key)
        if step:
            speed.append(f"| {label} | {f'{rate:.0f}' if rate else ''} | {step['seconds']} | {step['rc']} |")
    (folder / "speed_rows.md").write_text("\n".join(speed) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="gpu_check.json and the markdown rows go here")
    parser.add_argument("--work", type=Path, default=None, help="models, runs and exports (default OUT/work)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, one step per case")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per case (default 3; dry run 2)")
    parser.add_argument("--max-gib", type=float, default=None,
                        help="skip cases estimated above this (default: the card)")
    parser.add_argument("--view-gib", type=float, default=24.0, help="the card whose preflight verdict is checked")
    parser.add_argument("--time-budget-s", type=float, default=300.0, help="start no case after this many seconds")
    parser.add_argument("--no-e2e", action="store_true", help="skip nova train / TRL baseline / merge / export")
    parser.add_argument("--no-grid", action="store_true", help="only the end-to-end case")
    parser.add_argument("--multi-gpu", action="store_true",
                        help="run the multi-GPU case even on one device (2 ranks; gloo CPU ranks without CUDA)")
    parser.add_argument("--probe-grid", action="store_true", help="also run scripts/bench_memory.py's probe grid "
                        "(nova train --probe per row) on this GPU into OUT/probe_grid, beside the CPU rows of "
                        "docs/memory.md")
    args = parser.parse_args()
    args.steps = args.steps or (2 if args.dry_run else 3)
    args.work = args.work or args.out / "work"
    args.out.mkdir(parents=True, exist_ok=True)
    if args.max_gib is None:
        args.max_gib = _card_gib() if not args.dry_run else 1e9
    out: dict[str, Any] = {"environment": environment(), "args": {k: str(v) for k, v in vars(args).items()},
                           "cases": [], "end_to_end": None}
    path = args.out / "gpu_check.json"

    def save() -> None:
        path.write_text(json.dumps(out, indent=1, default=str), encoding="utf-8")

    if not args.no_grid:
        run_grid(args, out, save)
    if not args.no_e2e:
        out["end_to_end"] = end_to_end(args.work / "e2e", dry_run=args.dry_run)
        gpus = _gpu_count()
        if gpus > 1 or args.multi_gpu:  # the multi-GPU case (scripts/gpu_check_multi.py)
            from gpu_check_multi import multi_gpu

            out["multi_gpu"] = multi_gpu(args.work / "e2e" / "phase.yaml", args.work / "multi", max(gpus, 2), _cli)
            save()
    if args.probe_grid:
        out["probe_grid"] = probe_grid(args)
    save()
    write_rows(out, args.out)
    print(f"wrote {path}")


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def probe_grid(args: argparse.Namespace) -> str:
    """The probe grid of docs/memory.md on this device (the real ``nova train --probe`` per row, each in its
    own process); rows land in OUT/probe_grid/rows.jsonl as they finish, the table in probe_rows.md."""
    import subprocess

    out = args.out / "probe_grid"
    grid = "cpu" if args.dry_run else "gpu"
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_memory.py"), "--out", str(out), "--work",
           str(args.work / "probe"), "--grid", grid, "--time-budget-s", str(args.time_budget_s)]
    if args.dry_run:
        cmd += ["--rows", "smol-sft-none-128x1-nogc-free"]
    subprocess.run(cmd, check=False)
    table = subprocess.run([*cmd[:4], "--table"], capture_output=True, text=True, check=False).stdout
    (args.out / "probe_rows.md").write_text(table, encoding="utf-8")
    return str(out)


def _card_gib() -> float:
    import torch

    return torch.cuda.get_device_properties(0).total_memory / GiB


if __name__ == "__main__":
    main()
