"""Merge a run's adapter chain into its base: one standalone Hugging Face model directory.

What goes out: safetensors weights, config.json, tokenizer files with the chat template, and a
generation_config.json whose eos ids include the chat template's end-of-turn token (so plain
``generate`` stops at the end of an answer), plus ``nova_merge.json`` (where it came from and
the parity figures). No optimizer state, checkpoints or adapters: the default output is
``<RUN_DIR>-merged`` BESIDE the run directory, so shipping it never ships checkpoints.

How: the base is loaded in full precision (fp32 for the computation, never 4-bit), every
phase's adapter of the chain (earlier phases from ``config.yaml`` ``_chain``, then the run's
own ``adapter/``) is stacked and activated exactly as in training (nova.model.adapters), and
PEFT's ``merge_and_unload`` adds every delta ``scale_i * B_i @ A_i`` into the weights. Only
then are the weights cast to the output dtype (``auto`` = the dtype in the base's config.json).

Which full-precision weights (``--from``), for a run trained on a quantized (nf4/fp4/int8) base:
- ``original``: the base's own weights. Keeps the base's precision and is what other tools
  (``peft merge_and_unload`` on an unquantized base) produce, but the adapters were trained
  against the QUANTIZED weights, so the result is a model that was never trained or evaluated.
- ``dequantized`` (the default): the quantized weights the adapters were trained against,
  dequantized back (taken from the same bitsandbytes quantization the trainer used). The merge
  then reproduces the trained and evaluated model, up to float rounding.
Measured (max abs logit difference to the trained composition, nf4 + double quant, fp32):

                      SmolLM2-135M-Instruct           tiny test llama
                      (2 phases, 30 + 20 steps,       (2 phases, 6 + 8 steps)
                      16 held-out chats, 3963 tok)
  --from dequantized  max 1.7e-4, mean 8.6e-6,        max 4.8e-7
                      top-1 token agreement 100%
  --from original     max 22.3, mean 1.77,            max 0.12
                      top-1 token agreement 70.5%

So ``original`` ships a different model from the one trained: 30% of next-token argmaxes
change. Its held-out NLL was lower on SmolLM2 (3.085 vs 3.284 nats) because nf4 costs this very
small model a lot (base 3.210 -> 3.627 nats), but most of what the adapters learned does not
carry over (they lowered NLL by 0.344 on the quantized base, by 0.125 on the original one): the
adapters partly compensate for the quantization error. The default keeps what was evaluated
(eval losses, smoke answers, DPO margins); pass ``--from original`` to trade that for the base's
precision, and evaluate the merged model again. Full figures: docs/merge.md.
With ``quantization: none`` both are the same weights.

Checks: after the merge, the merged model's logits (fp32) must match the unmerged composition
(the same full-precision base + adapters, fp32) within ``tolerance`` on a few held-out prompts,
else nothing is written; the saved directory is reloaded with plain transformers and must give
the logits of the merged weights in the output dtype. The distance to the quantized trained
composition and the cost of the output dtype are reported, not enforced.

Safety: bad inputs (no adapter, an adapter for another base, an existing output without
``force``, too little disk) fail before anything is written; the output is written to a
temporary sibling directory and renamed into place at the end, and removed on any failure.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nova.config.schema import ModelConfig
from nova.errors import NovaError
from nova.files import human_bytes, replace_path
from nova.lazy import require
from nova.model.adapters import AdapterRef

SOURCES = ("dequantized", "original")
DEFAULT_SOURCE = "dequantized"
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# Merged vs unmerged, both fp32, max abs logit: measured 2.2e-4 on SmolLM2-135M and 4.8e-7 on the tiny
# model (summation order only). 1e-2 leaves room for larger models' bigger activations, and is still
# ~2000x below what a wrong merge shows (the SmolLM2 run without its adapters: 20 logits away).
DEFAULT_TOLERANCE = 1e-2
MERGE_INFO = "nova_merge.json"

FIXED_PROMPTS = (
    "What is the capital of France?",
    "Explain gradient descent in one sentence.",
    "Ce inseamna cuvantul doica?",
    "Write a haiku about autumn.",
)
MAX_PROMPT_TOKENS = 128
MAX_EVAL_CONVERSATIONS = 4  # a check, not an evaluation: a few chats are enough

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class MergeRequest:
    """What ``nova merge`` was asked to do; ``out`` None means ``<run_dir>-merged``."""

    run_dir: Path
    out: Path | None = None
    dtype: str = "auto"
    source: str = DEFAULT_SOURCE
    force: bool = False
    tolerance: float = DEFAULT_TOLERANCE


@dataclass(frozen=True)
class RunInfo:
    """A finished run directory: its base, the adapters to merge (oldest first), prompts to check with."""

    run_dir: Path
    name: str
    model_cfg: ModelConfig
    adapters: list[AdapterRef]
    conversations: list[list[dict[str, str]]]


@dataclass
class Parity:
    """Max abs logit differences over the check prompts."""

    merged_vs_unmerged: float  # fp32 merged vs fp32 base + adapters: must be within tolerance
    saved_vs_merged_cast: float  # reloaded output vs the merged weights in the output dtype
    dtype_cost: float  # merged in the output dtype vs merged fp32 (informational)
    vs_trained: float | None  # merged fp32 vs the quantized trained composition (informational)
    prompts: int = 0
    tokens: int = 0


@dataclass
class MergeResult:
    out_dir: Path
    dtype: str
    source: str
    adapters: list[str]
    parity: Parity
    eos_token_ids: list[int]
    output_bytes: int
    checkpoint_bytes: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        p = self.parity
        out = [
            f"merged {' + '.join(self.adapters)} into {self.out_dir} ({self.dtype}, from {self.source} weights)",
            f"parity on {p.prompts} prompts / {p.tokens} tokens (max abs logit diff):",
            f"  merged vs base + adapters (fp32): {p.merged_vs_unmerged:.3g}",
            f"  reloaded output vs merged {self.dtype}: {p.saved_vs_merged_cast:.3g}",
        ]
        if self.dtype != "float32":
            out.append(f"  {self.dtype} rounding vs fp32 merged: {p.dtype_cost:.3g} (informational)")
        if p.vs_trained is not None:
            out.append(f"  merged vs the trained (quantized) composition: {p.vs_trained:.3g} (informational)")
        out += [f"  {n}" for n in self.notes]
        out.append(f"eos token ids: {self.eos_token_ids}")
        out.append(f"output size: {human_bytes(self.output_bytes)}; not copied: checkpoints "
                   f"{human_bytes(self.checkpoint_bytes)}, optimizer state and adapters")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "dtype": self.dtype, "from": self.source, "adapters": self.adapters,
                "parity": self.parity.__dict__, "eos_token_ids": self.eos_token_ids,
                "output_bytes": self.output_bytes, "checkpoint_bytes": self.checkpoint_bytes,
                "seconds": round(self.seconds, 1)}


# ---------------------------------------------------------------- reading and checking the inputs


def tree_bytes(path: Path) -> int:
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def read_run(run_dir: Path) -> RunInfo:
    """Read a run directory written by ``nova train``; fails unless its adapter (and the chain's) exist."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NovaError(f"run directory {run_dir} does not exist", hint="pass --run <output_dir>/<phase>")
    config_file = run_dir / "config.yaml"
    if not config_file.exists():
        raise NovaError(f"{run_dir} is not a nova run directory (no config.yaml)",
                        hint="pass the directory of a phase written by nova train")
    try:
        data = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict) or "model" not in data or "name" not in data:
            raise NovaError(f"{config_file} has no model or name section", hint="it is not a resolved run config")
        model_cfg = ModelConfig.model_validate(data["model"])
    except (yaml.YAMLError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        raise NovaError(f"cannot read {config_file}: {str(exc).splitlines()[0]}",
                        hint="it should be the config.yaml nova train wrote") from None
    adapter = run_dir / "adapter"
    if not (adapter / "adapter_config.json").exists():
        raise NovaError(f"run directory {run_dir} has no adapter (training did not finish)",
                        hint="finish or resume training first (nova train), then merge")
    refs = [AdapterRef(str(c["phase"]), _locate_chain_adapter(Path(c["adapter"]), run_dir))
            for c in data.get("_chain") or []]
    for ref in refs:
        if not (ref.path / "adapter_config.json").exists():
            raise NovaError(f"the adapter of earlier phase '{ref.name}' is missing at {ref.path}",
                            hint="that phase's run directory was moved or deleted; retrain it or restore it")
    refs.append(AdapterRef(str(data["name"]), adapter))
    names = [r.name for r in refs]
    if len(set(names)) != len(names):
        raise NovaError(f"adapter names repeat in the chain of {run_dir}: {names}")
    return RunInfo(run_dir, str(data["name"]), model_cfg, refs, check_conversations(data))


def _locate_chain_adapter(recorded: Path, run_dir: Path) -> Path:
    """The recorded path, or the same phase beside this run (a pipeline moved, or a relative output_dir)."""
    if (recorded / "adapter_config.json").exists():
        return recorded
    sibling = run_dir.parent / recorded.parent.name / recorded.name
    return sibling if (sibling / "adapter_config.json").exists() else recorded


def check_conversations(config: dict[str, Any]) -> list[list[dict[str, str]]]:
    """Conversations to compare logits on: the run's eval files (else its training files), plus fixed prompts.

    Real chats exercise longer sequences and the assistant turn; the fixed prompts make sure
    there is always something to compare, also when the data files are gone.
    """
    paths: list[str] = []
    sections = [config.get("data") or {}] + [(s or {}).get("data") or {} for s in config.get("stages") or []]
    for key in ("eval_datasets", "datasets"):
        for section in sections:
            paths += [d.get("path") for d in section.get(key) or [] if isinstance(d, dict) and d.get("path")]
    conversations: list[list[dict[str, str]]] = []
    for path in paths:
        conversations += _read_conversations(Path(path), MAX_EVAL_CONVERSATIONS - len(conversations))
        if len(conversations) >= MAX_EVAL_CONVERSATIONS:
            break
    prompts = [*FIXED_PROMPTS, *(config.get("smoke_prompts") or [])]
    conversations += [[{"role": "user", "content": str(p)}] for p in prompts]
    return conversations


def _read_conversations(path: Path, limit: int) -> list[list[dict[str, str]]]:
    """Up to ``limit`` chat records (``messages`` lists) of a JSONL file; anything else is skipped."""
    found: list[list[dict[str, str]]] = []
    if limit <= 0 or not path.is_file() or path.suffix not in (".jsonl", ".json"):
        return found
    try:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if len(found) >= limit:
                    break
                try:
                    messages = json.loads(line).get("messages")
                except (ValueError, AttributeError):
                    continue
                if isinstance(messages, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                                      and isinstance(m.get("role"), str) for m in messages):
                    found.append([{"role": m["role"], "content": m["content"]} for m in messages])
    except OSError:
        return []
    return found


def _same_model_dir(a: Path, b: Path) -> bool:
    """Two model directories hold the same model when they are one directory or have equal config.json."""
    try:
        if a.resolve() == b.resolve():
            return True
        return json.loads((a / "config.json").read_text()) == json.loads((b / "config.json").read_text())
    except (OSError, ValueError):
        return False


def check_adapter_base(ref: AdapterRef, model_cfg: ModelConfig, source: str) -> None:
    """The adapter must have been trained on the run's base (by name or path; shapes are checked later)."""
    recorded = json.loads((ref.path / "adapter_config.json").read_text(encoding="utf-8")).get(
        "base_model_name_or_path")
    if not recorded or recorded in (model_cfg.base, source):
        return
    if Path(recorded).is_dir() and Path(source).is_dir() and _same_model_dir(Path(recorded), Path(source)):
        return
    raise NovaError(f"adapter '{ref.name}' ({ref.path}) was trained on '{recorded}', "
                    f"but the run's base is '{model_cfg.base}'",
                    hint="merge with the base the adapter was trained on (model.base in the run's config.yaml)")


def check_adapter_shapes(model: Any, ref: AdapterRef) -> None:
    """Every LoRA matrix must fit its module of the base (a different base fails here, with names)."""
    safetensors = require("safetensors")
    weights = ref.path / "adapter_model.safetensors"
    if not weights.exists():
        raise NovaError(f"adapter '{ref.name}' has no adapter_model.safetensors in {ref.path}")
    modules = dict(model.named_modules())
    problems: list[str] = []
    with safetensors.safe_open(str(weights), framework="pt") as fh:
        for key in fh.keys():  # noqa: SIM118 (safe_open is not a dict)
            shape = list(fh.get_slice(key).get_shape())
            problem = _shape_problem(modules, key, shape)
            if problem:
                problems.append(problem)
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise NovaError(f"adapter '{ref.name}' does not fit the base model: {shown}",
                        hint="the adapter was trained on a different base model")


def _shape_problem(modules: dict[str, Any], key: str, shape: list[int]) -> str | None:
    """None when ``key`` (a saved LoRA tensor) fits its base module, else what is wrong."""
    for part, dim in ((".lora_A.", 1), (".lora_B.", 0)):
        if part in key:
            name = key.split(part)[0].removeprefix("base_model.model.")
            module = modules.get(name)
            if module is None:
                return f"{name} is not a module of the base"
            size = getattr(module, "in_features" if dim == 1 else "out_features", None)
            if size is None:  # not a linear layer (embedding LoRA): PEFT checks those itself
                return None
            expected = int(size)
            if len(shape) != 2 or shape[dim] != expected:
                return f"{key} has shape {shape}, the base's {name} needs {'in' if dim else 'out'} size {expected}"
    return None


def default_out(run_dir: Path) -> Path:
    """``<run_dir>-merged``, beside the run directory (never inside it, where the checkpoints are)."""
    run_dir = Path(run_dir).resolve()
    return run_dir.with_name(run_dir.name + "-merged")


def _inside(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def check_output(out: Path, info: RunInfo, source: str, force: bool) -> None:
    """Refuse an output that exists (unless ``force``) or whose replacement would destroy inputs."""
    out = out.resolve()
    protected = [info.run_dir.resolve(), *[r.path.resolve() for r in info.adapters]]
    if Path(source).exists():
        protected.append(Path(source).resolve())
    for path in protected:
        if _inside(path, out):
            raise NovaError(f"--out {out} would overwrite an input of the merge ({path})",
                            hint="choose a new directory, e.g. the default <run>-merged")
    if not out.exists():
        return
    if not force:
        raise NovaError(f"output directory {out} already exists", hint="pass --force to replace it, or choose --out")
    if not out.is_dir():
        raise NovaError(f"--out {out} exists and is not a directory")
    if any(out.iterdir()) and not (out / "config.json").exists():
        raise NovaError(f"--out {out} is a non-empty directory that is not a model directory; "
                        "--force only replaces an earlier merged model", hint="choose another --out")


def resolve_dtype(setting: str, source: str) -> str:
    """The output dtype name: ``auto`` is the dtype the base was stored in (its config.json), else fp32."""
    if setting != "auto":
        if setting not in DTYPES:
            raise NovaError(f"unknown dtype '{setting}'", hint="use auto, bf16, fp16 or fp32")
        return DTYPES[setting]
    try:
        config = json.loads((Path(source) / "config.json").read_text(encoding="utf-8"))
        stored = config.get("dtype") or config.get("torch_dtype")
    except (OSError, ValueError):  # a hub id: its config from the local cache
        try:
            stored = str(require("transformers").AutoConfig.from_pretrained(source).dtype).replace("torch.", "")
        except (OSError, ValueError):
            stored = None
    return stored if stored in DTYPES.values() else "float32"


def estimate_bytes(source: str, dtype_name: str) -> int | None:
    """The output size from the base's safetensors headers (parameters x bytes per value), or None."""
    files = sorted(Path(source).glob("*.safetensors")) if Path(source).is_dir() else []
    if not files:
        return None
    safetensors = require("safetensors")
    count = 0
    for file in files:
        with safetensors.safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118
                n = 1
                for d in fh.get_slice(key).get_shape():
                    n *= int(d)
                count += n
    itemsize = 4 if dtype_name == "float32" else 2
    extra = sum(f.stat().st_size for f in Path(source).iterdir() if f.is_file() and f.suffix != ".safetensors")
    return count * itemsize + extra


def check_disk(out: Path, needed: int) -> None:
    """Fail before writing when the output's filesystem has less free space than the estimate (+5%)."""
    probe = out.resolve().parent
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed * 1.05:
        raise NovaError(f"not enough disk space for the merged model in {probe}: needs about "
                        f"{human_bytes(needed)}, {human_bytes(free)} free",
                        hint="free some space, choose --out on another disk, or a 16-bit --dtype")


# ---------------------------------------------------------------- tokens, logits, generation config


def encode_conversations(tokenizer: Any, conversations: Sequence[list[dict[str, str]]]) -> list[Any]:
    """Token ids (1 x n tensors) of each conversation rendered with the chat template, truncated."""
    torch = require("torch")
    encoded = []
    for messages in conversations:
        if getattr(tokenizer, "chat_template", None):
            prompt = messages[-1]["role"] != "assistant"
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
            ids = tokenizer(text, add_special_tokens=False).input_ids
        else:
            ids = tokenizer("\n".join(m["content"] for m in messages)).input_ids
        if ids:
            encoded.append(torch.tensor([ids[:MAX_PROMPT_TOKENS]], dtype=torch.long))
    return encoded


def compute_logits(model: Any, batches: Iterable[Any]) -> list[Any]:
    """fp32 logits on the CPU for each input (one sequence at a time: no padding to get wrong)."""
    torch = require("torch")
    device = next(model.parameters()).device
    out = []
    model.eval()
    with torch.no_grad():
        for ids in batches:
            logits = model(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device)).logits
            out.append(logits[0].float().cpu())
    return out


def max_abs_diff(a: Sequence[Any], b: Sequence[Any]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The special token the chat template puts after an assistant message (e.g. <|im_end|>), if any."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    marker = "NOVAMERGEMARKER"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # a template may reject this conversation; then there is nothing to learn from it
        return None
    if marker not in text:
        return None
    tail = text.split(marker, 1)[1].lstrip()
    ids = tokenizer(tail, add_special_tokens=False).input_ids if tail else []
    special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    return int(ids[0]) if ids and ids[0] in special else None


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list | tuple) else [int(value)]


def generation_config(source: str, model: Any, tokenizer: Any) -> Any:
    """The base's generation config with eos = base eos + tokenizer eos + the end-of-turn token."""
    transformers = require("transformers")
    try:
        gen = transformers.GenerationConfig.from_pretrained(source)
    except (OSError, ValueError):
        gen = transformers.GenerationConfig.from_model_config(model.config)
    ids: list[int] = []
    for i in [*_as_list(gen.eos_token_id), *_as_list(tokenizer.eos_token_id), *_as_list(end_of_turn_id(tokenizer))]:
        if i not in ids:
            ids.append(i)
    gen.eos_token_id = ids[0] if len(ids) == 1 else ids
    if tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
    if gen.bos_token_id is None and tokenizer.bos_token_id is not None:
        gen.bos_token_id = tokenizer.bos_token_id
    return gen


# ---------------------------------------------------------------- weights


def quantized_composition(info: RunInfo, source: str, batches: list[Any], want_weights: bool,
                          say: Say) -> tuple[list[Any], dict[str, Any]]:
    """The model as trained (quantized base + adapters): its logits, and its base weights dequantized.

    The dequantized weights are read back from the same bitsandbytes modules the trainer used,
    so ``--from dequantized`` starts from exactly the weights the adapters were trained against.
    """
    from nova.model.loading import choose_placement, load_base_model

    placement = choose_placement(info.model_cfg.compute_dtype)
    say(f"loading the trained composition: {source} ({info.model_cfg.quantization}, {placement.dtype_name})")
    model = load_base_model(info.model_cfg, placement, source)
    weights = dequantized_weights(model) if want_weights else {}
    model = stack_checked(model, info.adapters)
    logits = compute_logits(model, batches)
    del model
    gc.collect()
    return logits, weights


def dequantized_weights(model: Any) -> dict[str, Any]:
    """fp32 CPU copies of every bitsandbytes-quantized linear weight, keyed by module name."""
    bnb = require("bitsandbytes")
    torch = require("torch")
    out: dict[str, Any] = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, bnb.nn.Linear4bit):
            value = bnb.functional.dequantize_4bit(weight.data, weight.quant_state)
        elif isinstance(module, bnb.nn.Linear8bitLt):
            scb = getattr(weight, "SCB", None)
            if scb is None:
                raise NovaError(f"cannot dequantize the int8 weight of {name}", hint="use --from original")
            value = bnb.functional.int8_vectorwise_dequant(weight.data, scb)
        else:
            continue
        out[name] = value.to(device="cpu", dtype=torch.float32).reshape(module.out_features, module.in_features)
    if not out:
        raise NovaError("the quantized base has no bitsandbytes layers to dequantize", hint="use --from original")
    return out


def load_full_precision(info: RunInfo, source: str, dequantized: dict[str, Any], say: Say) -> Any:
    """The base in fp32 (on the GPU when there is one), optionally with the dequantized weights put in."""
    torch = require("torch")
    from nova.model.loading import Placement, load_base_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    say(f"loading {source} in fp32 on {device}" + (" (dequantized weights)" if dequantized else ""))
    model = load_base_model(info.model_cfg, Placement(device, torch.float32), source, quantize=False)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, value in dequantized.items():
            target = modules.get(name)
            if target is None or tuple(target.weight.shape) != tuple(value.shape):
                raise NovaError(f"dequantized weight {name} does not fit the full-precision base",
                                hint="use --from original")
            target.weight.copy_(value.to(target.weight.device))
    model.eval()
    return model


def stack_checked(model: Any, adapters: Sequence[AdapterRef]) -> Any:
    """Stack the chain on ``model`` as in training, all active, after checking every adapter fits it."""
    from nova.model.adapters import activate, stack_frozen

    for ref in adapters:
        check_adapter_shapes(model, ref)
    peft_model = stack_frozen(model, adapters)
    names = [r.name for r in adapters]
    activate(peft_model, names)
    peft_model.eval()
    return peft_model


# ---------------------------------------------------------------- writing


def temp_sibling(out: Path, tag: str) -> Path:
    return out.with_name(f".{out.name}.{tag}-{os.getpid()}")


def write_model(model: Any, tokenizer: Any, gen: Any, tmp: Path) -> None:
    """Save weights (safetensors shards), config, generation config and tokenizer (with chat template)."""
    model.generation_config = gen
    model.save_pretrained(str(tmp), safe_serialization=True, max_shard_size="5GB")
    tokenizer.save_pretrained(str(tmp))


def check_saved(tmp: Path, batches: list[Any], expected: list[Any], chat_template: bool) -> float:
    """Reload the written directory with plain transformers (no PEFT, no nova); return its logit diff."""
    transformers = require("transformers")
    torch = require("torch")
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp))
    except (OSError, ValueError) as exc:
        raise NovaError(f"the merged model does not reload with transformers: {exc}") from exc
    if chat_template and not getattr(tokenizer, "chat_template", None):
        raise NovaError("the merged model's tokenizer lost its chat template")
    diff = max_abs_diff(compute_logits(model, batches), expected)
    del model
    gc.collect()
    return diff


def _restore_padding_side(tokenizer: Any, source: str) -> None:
    """nova trains with right padding; the shipped tokenizer keeps the base's own setting."""
    try:
        config = json.loads((Path(source) / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if config.get("padding_side") in ("left", "right"):
        tokenizer.padding_side = config["padding_side"]


# ---------------------------------------------------------------- the whole merge


@dataclass
class MergePlan:
    """The checked inputs of a merge, before any weights are loaded."""

    info: RunInfo
    source: str  # a local model directory or hub id transformers can load
    out: Path
    dtype_name: str
    source_kind: str  # dequantized or original (original when the run was not quantized)
    estimate: int | None


def plan_merge(request: MergeRequest) -> MergePlan:
    """Every check that needs no weights: run dir, chain, base names, output, dtype, disk."""
    from nova.model.loading import resolve_base

    if request.source not in SOURCES:
        raise NovaError(f"unknown --from '{request.source}'", hint="use dequantized or original")
    if not request.tolerance > 0:
        raise NovaError("--tolerance must be positive")
    info = read_run(request.run_dir)
    source = resolve_base(info.model_cfg)
    out = Path(request.out).resolve() if request.out else default_out(info.run_dir)
    check_output(out, info, source, request.force)
    for ref in info.adapters:
        check_adapter_base(ref, info.model_cfg, source)
    dtype_name = resolve_dtype(request.dtype, source)
    estimate = estimate_bytes(source, dtype_name)
    if estimate is not None:
        check_disk(out, estimate)
    source_kind = request.source if info.model_cfg.quantization != "none" else "original"
    return MergePlan(info, source, out, dtype_name, source_kind, estimate)


def merge_in_fp32(plan: MergePlan, batches: list[Any], tolerance: float, say: Say) -> tuple[Any, list[Any], Parity]:
    """Merge the chain into fp32 weights; fails unless the merged logits equal base + adapters (fp32)."""
    trained, dequantized = None, {}
    if plan.source_kind == "dequantized":
        trained, dequantized = quantized_composition(plan.info, plan.source, batches, True, say)
    elif plan.info.model_cfg.quantization != "none":
        try:  # only informational with --from original: a machine without bitsandbytes can still merge
            trained, _ = quantized_composition(plan.info, plan.source, batches, False, say)
        except NovaError as exc:
            say(f"skipped the comparison with the trained (quantized) model: {exc}")
    model = load_full_precision(plan.info, plan.source, dequantized, say)
    dequantized.clear()
    peft_model = stack_checked(model, plan.info.adapters)
    unmerged = compute_logits(peft_model, batches)
    names = [r.name for r in plan.info.adapters]
    say(f"merging {len(names)} adapter(s): {', '.join(names)}")
    merged_model = peft_model.merge_and_unload(safe_merge=True, adapter_names=names)
    del peft_model
    merged = compute_logits(merged_model, batches)
    diff = max_abs_diff(merged, unmerged)
    if diff > tolerance:
        raise NovaError(f"merged model differs from base + adapters by {diff:.3g} (max abs logit, fp32), "
                        f"above the tolerance {tolerance:g}; nothing was written",
                        hint="report this as a bug; --tolerance raises the limit")
    parity = Parity(diff, 0.0, 0.0, max_abs_diff(merged, trained) if trained is not None else None,
                    len(batches), sum(int(b.shape[1]) for b in batches))
    return merged_model, merged, parity


def round_parameters(model: Any, dtype_name: str) -> None:
    """Round the weights to ``dtype_name`` in place, kept in fp32: the logits of exactly what is saved.

    Only parameters: casting the whole model would also round buffers such as the rotary
    frequencies, which are not saved and are recomputed in full precision on reload.
    """
    torch = require("torch")
    dtype = getattr(torch, dtype_name)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.to(dtype).to(param.dtype))


def write_verified(plan: MergePlan, model: Any, tokenizer: Any, batches: list[Any], merged: list[Any], parity: Parity,
                   tolerance: float, say: Say) -> Any:
    """Write to a temporary sibling, reload it with plain transformers, check it, rename it into place."""
    torch = require("torch")
    if plan.estimate is None:
        check_disk(plan.out, sum(p.numel() for p in model.parameters()) * (4 if plan.dtype_name == "float32" else 2))
    gen = generation_config(plan.source, model, tokenizer)
    round_parameters(model, plan.dtype_name)
    cast = compute_logits(model, batches)
    parity.dtype_cost = max_abs_diff(cast, merged)
    tmp = temp_sibling(plan.out, "tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        plan.out.parent.mkdir(parents=True, exist_ok=True)
        say(f"writing {plan.dtype_name} weights to {tmp}")
        write_model(model.to(getattr(torch, plan.dtype_name)), tokenizer, gen, tmp)
        del model
        gc.collect()
        say("reloading the written model with plain transformers")
        parity.saved_vs_merged_cast = check_saved(tmp, batches, cast, bool(getattr(tokenizer, "chat_template", None)))
        if parity.saved_vs_merged_cast > tolerance:
            raise NovaError(f"the written model reloads with logits {parity.saved_vs_merged_cast:.3g} away from "
                            f"the merged weights (tolerance {tolerance:g}); nothing was kept")
        _write_info(tmp / MERGE_INFO, plan, parity)
        replace_path(tmp, plan.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return gen


def merge_run(request: MergeRequest, say: Say = _quiet) -> MergeResult:
    """Check the inputs, merge the chain in fp32, verify parity, write the model atomically."""
    from nova.model.loading import load_tokenizer

    started = time.time()
    plan = plan_merge(request)
    tokenizer = load_tokenizer(plan.info.model_cfg, plan.source)
    _restore_padding_side(tokenizer, plan.source)
    batches = encode_conversations(tokenizer, plan.info.conversations)
    model, merged, parity = merge_in_fp32(plan, batches, request.tolerance, say)
    gen = write_verified(plan, model, tokenizer, batches, merged, parity, request.tolerance, say)
    notes = [] if plan.info.model_cfg.quantization != "none" else [
        "the run used quantization: none, so --from does not matter"]
    return MergeResult(plan.out, plan.dtype_name, plan.source_kind, [r.name for r in plan.info.adapters], parity,
                       _as_list(gen.eos_token_id), tree_bytes(plan.out), tree_bytes(plan.info.run_dir / "checkpoints"),
                       time.time() - started, notes)


def _write_info(path: Path, plan: MergePlan, parity: Parity) -> None:
    """Provenance beside the weights: which base and adapters, how, and the parity figures."""
    cfg = plan.info.model_cfg
    data = {"run_dir": str(plan.info.run_dir.resolve()), "base": cfg.base, "base_source": plan.source,
            "quantization": cfg.quantization, "double_quant": cfg.double_quant,
            "adapters": [{"name": r.name, "path": str(r.path.resolve())} for r in plan.info.adapters],
            "from": plan.source_kind, "dtype": plan.dtype_name, "parity": parity.__dict__,
            "merged_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
