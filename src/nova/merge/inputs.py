"""What a merge is asked to do, and every check of its inputs that needs no weights.

The run directory is read through ``nova.runs`` (the one reader of a run's config.yaml); this
module adds what only a merge needs: the conversations to check parity on, the base each adapter
was trained on, a safe output, the output dtype and enough disk. Nothing here imports torch, and
``nova.runs`` is imported inside the functions that read a run, so the CLI can import the
constants of this package without loading the config schema.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nova.errors import NovaError
from nova.files import human_bytes
from nova.lazy import require
from nova.merge import DEFAULT_SOURCE, DEFAULT_TOLERANCE, DTYPES, SOURCES

MERGE_INFO = "nova_merge.json"  # written into every merged model: the proof that --force may replace it

if TYPE_CHECKING:
    from nova.config.schema import ModelConfig
    from nova.runs import AdapterRef, RunRecord


FIXED_PROMPTS = (
    "What is the capital of France?",
    "Explain gradient descent in one sentence.",
    "Ce inseamna cuvantul doica?",
    "Write a haiku about autumn.",
)
MAX_EVAL_CONVERSATIONS = 4  # a check, not an evaluation: a few chats are enough

Conversation = list[dict[str, str]]


@dataclass(frozen=True)
class MergeRequest:
    """What ``nova merge`` was asked to do; ``out`` None means ``<run_dir>-merged``."""

    run_dir: Path
    out: Path | None = None
    dtype: str = "auto"
    source: str = DEFAULT_SOURCE
    force: bool = False
    tolerance: float = DEFAULT_TOLERANCE
    trust_remote_code: bool = False  # from the command line only, never from the run's config.yaml


@dataclass(frozen=True)
class MergeInputs:
    """A finished run: its record, the adapters to merge (oldest first, all on disk), chats to check with,
    and the model config every load uses (the run's, with ``trust_remote_code`` from the command line)."""

    record: RunRecord
    adapters: list[AdapterRef]
    conversations: list[Conversation]
    model_cfg: ModelConfig

    @property
    def run_dir(self) -> Path:
        return self.record.run.path


@dataclass
class MergePlan:
    """The checked inputs of a merge, before any weights are loaded."""

    inputs: MergeInputs
    source: str  # a local model directory or hub id transformers can load
    out: Path
    dtype_name: str
    source_kind: str  # dequantized or original (original when the run was not quantized)
    estimate: int | None
    system: Any = None  # the run's system prompt (nova.data.system.SystemPrompt), set once the tokenizer is loaded


def read_inputs(run_dir: Path, *, trust_remote_code: bool = False, command: str = "nova merge") -> MergeInputs:
    """Read a run directory written by ``nova train``; fails unless its adapter (and the chain's) exist.

    ``trust_remote_code`` replaces the recorded setting: a run directory can come from someone else
    (a shared disk, a download), and its config.yaml must not be what lets a model's code run.
    """
    from nova.runs import read_run
    from nova.runs.guard import require_finished
    from nova.runs.locate import located_model

    record = read_run(Path(run_dir))
    require_finished(record.run.path, command, [r.path.parent for r in record.chain])
    if record.full:  # adapter: full wrote the model itself: nothing to merge
        model_dir = record.require_model()
        raise NovaError(f"{record.run.path} is a full fine-tuning run: there is nothing to merge; the model is "
                        f"{model_dir}", hint=f"load it directly (nova infer --model {record.run.path}, nova export "
                        f"--model {model_dir}, or AutoModelForCausalLM.from_pretrained)")
    model_cfg = located_model(record).changed(trust_remote_code=trust_remote_code)
    return MergeInputs(record, record.require_adapters(), check_conversations(record), model_cfg)


def check_conversations(record: RunRecord) -> list[Conversation]:
    """Conversations to compare logits on: the run's eval files (else its training files), plus fixed prompts.

    Real chats exercise longer sequences and the assistant turn; the fixed prompts make sure
    there is always something to compare, also when the data files are gone.
    """
    sections = [stage.data for stage in record.phase.stage_list]
    paths = [spec.path for key in ("eval_datasets", "datasets") for data in sections for spec in getattr(data, key)]
    conversations: list[Conversation] = []
    for path in paths:
        conversations += _read_conversations(Path(path), MAX_EVAL_CONVERSATIONS - len(conversations))
        if len(conversations) >= MAX_EVAL_CONVERSATIONS:
            break
    prompts = [*FIXED_PROMPTS, *record.phase.smoke_prompts]
    conversations += [[{"role": "user", "content": str(p)}] for p in prompts]
    return conversations


def _read_conversations(path: Path, limit: int) -> list[Conversation]:
    """Up to ``limit`` chat records (``messages`` lists) of a JSONL file; anything else is skipped."""
    found: list[Conversation] = []
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
        return json.loads((a / "config.json").read_text(encoding="utf-8")) == json.loads(
            (b / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def check_adapter_base(ref: AdapterRef, model_cfg: ModelConfig, source: str, configured: str | None = None) -> None:
    """The adapter must have been trained on the run's base (by name or path; shapes are checked later).

    nova records a local base by its directory's name when it was configured by an absolute path
    (``nova.model.adapters.save_trainable``), so a bare name matches the name of the base or source;
    ``configured`` is model.base as the run's config.yaml says (a relative path, before it was located).
    """
    from nova.runs.layout import ADAPTER_CONFIG

    recorded = json.loads((ref.path / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not recorded or recorded in (model_cfg.base, source, configured):
        return
    if Path(recorded).name == recorded and recorded in (Path(model_cfg.base).name, Path(source).name):
        return
    if Path(recorded).is_dir() and Path(source).is_dir() and _same_model_dir(Path(recorded), Path(source)):
        return
    raise NovaError(f"adapter '{ref.name}' ({ref.path}) was trained on '{recorded}', "
                    f"but the run's base is '{model_cfg.base}'",
                    hint="merge with the base the adapter was trained on (model.base in the run's config.yaml)")


def default_out(run_dir: Path) -> Path:
    """``<run_dir>-merged``, beside the run directory (never inside it, where the checkpoints are)."""
    run_dir = Path(run_dir).resolve()
    return run_dir.with_name(run_dir.name + "-merged")


def _inside(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def check_output(out: Path, inputs: MergeInputs, source: str, force: bool) -> None:
    """Refuse an output that exists (unless ``force``) or whose replacement would destroy inputs."""
    out = out.resolve()
    protected = [inputs.run_dir.resolve(), *[r.path.resolve() for r in inputs.adapters]]
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
    if any(out.iterdir()) and not (out / MERGE_INFO).is_file():  # a config.json anyone's model may have
        raise NovaError(f"--out {out} is a non-empty directory that nova merge did not write (no {MERGE_INFO}); "
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


def plan_merge(request: MergeRequest) -> MergePlan:
    """Every check that needs no weights: run dir, chain, base names, output, dtype, disk."""
    from nova.model.loading import resolve_base

    if request.source not in SOURCES:
        raise NovaError(f"unknown --from '{request.source}'", hint="use dequantized or original")
    if not request.tolerance > 0:
        raise NovaError("--tolerance must be positive")
    inputs = read_inputs(request.run_dir, trust_remote_code=request.trust_remote_code)
    source = resolve_base(inputs.model_cfg)
    out = Path(request.out).resolve() if request.out else default_out(inputs.run_dir)
    check_output(out, inputs, source, request.force)
    for ref in inputs.adapters:
        check_adapter_base(ref, inputs.model_cfg, source, inputs.record.model.base)
    dtype_name = resolve_dtype(request.dtype, source)
    estimate = estimate_bytes(source, dtype_name)
    if estimate is not None:
        check_disk(out, estimate)
    source_kind = request.source if inputs.model_cfg.quantization != "none" else "original"
    return MergePlan(inputs, source, out, dtype_name, source_kind, estimate)
