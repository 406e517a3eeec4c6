"""Inference: load a tuned model (run directory, merged model, or base + adapter) and answer prompts.

A run directory is loaded exactly as it was trained: the same base, quantized the same way,
with every phase's adapter of the chain stacked in order (see nova.model.adapters).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nova.config.schema import ModelConfig
from nova.errors import NovaError
from nova.lazy import require
from nova.runs.layout import is_run_dir
from nova.runs.record import AdapterRef, RunRecord, read_run


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    description: str
    has_adapters: bool = False
    run: RunRecord | None = None

    def base_view(self) -> Any:
        """A context in which the model answers as its base (every adapter off), for --compare."""
        from contextlib import nullcontext

        return self.model.disable_adapter() if self.has_adapters else nullcontext()


def load_model(path: str | Path, *, adapter: str | Path | None = None, base_only: bool = False,
               quantization: str | None = None) -> LoadedModel:
    """Load a run directory (as trained), a plain model directory, or a base plus ``adapter``."""
    from nova.model.adapters import activate, stack_frozen
    from nova.model.loading import choose_placement, load_base_model, load_tokenizer, resolve_base

    path = Path(path)
    record: RunRecord | None = None
    if is_run_dir(path):
        record = read_run(path)
        model_cfg, adapters = record.model, record.require_adapters()
    else:
        model_cfg = ModelConfig(base=str(path), quantization="none")
        adapters = [AdapterRef("adapter", Path(adapter))] if adapter else []
    if quantization is not None:
        model_cfg = model_cfg.changed(quantization=quantization)
    source = resolve_base(model_cfg)
    placement = choose_placement(model_cfg.compute_dtype)
    tokenizer = load_tokenizer(model_cfg, source)
    model = load_base_model(model_cfg, placement, source)
    stacked = bool(adapters) and not base_only
    if stacked:
        model = stack_frozen(model, adapters)
        activate(model, [r.name for r in adapters])
    model.eval()
    names = " + ".join(r.name for r in adapters) if stacked else "no adapter"
    return LoadedModel(model, tokenizer, f"{source} ({model_cfg.quantization}) + {names}", stacked, record)


def read_prompts_file(path: Path) -> list[list[dict[str, str]]]:
    """JSONL prompts: each line {"prompt": "..."} (optionally with "system") or {"messages": [...]}."""
    import json

    from nova.errors import DataError, Problem

    conversations: list[list[dict[str, str]]] = []
    problems = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            problems.append(Problem(f"{path}:{number}", f"invalid JSON ({exc.msg})"))
            continue
        if isinstance(record, dict) and isinstance(record.get("messages"), list):
            conversations.append(record["messages"])
        elif isinstance(record, dict) and isinstance(record.get("prompt"), str):
            system = [{"role": "system", "content": record["system"]}] if record.get("system") else []
            conversations.append([*system, {"role": "user", "content": record["prompt"]}])
        else:
            problems.append(Problem(f"{path}:{number}", "expected {\"prompt\": TEXT} or {\"messages\": [...]}"))
    if problems:
        raise DataError(f"bad prompts file {path}", problems)
    if not conversations:
        raise DataError(f"bad prompts file {path}", [Problem(str(path), "no prompts in the file")])
    return conversations


def eval_loss(loaded: LoadedModel) -> list[dict[str, Any]]:
    """Holdout loss and perplexity of a run, per SFT stage, on the same eval split training used."""
    import math

    torch = require("torch")
    from nova.data import prepare_stage_data

    if loaded.run is None:
        raise NovaError("--eval needs a run directory (it re-creates the run's holdout split)")
    results = []
    for index, stage in enumerate(loaded.run.phase.stage_list):
        if stage.method != "sft":
            continue
        prepared = prepare_stage_data(stage.data, loaded.tokenizer, method="sft", seed=stage.training.seed)
        if prepared.eval is None or len(prepared.eval) == 0:
            continue
        total, count = 0.0, 0
        with torch.no_grad():
            for row in prepared.eval:
                ids = torch.tensor([row["input_ids"]], device=loaded.model.device)
                labels = torch.tensor([row["labels"]], device=loaded.model.device)
                n = int((labels[:, 1:] != -100).sum())
                if n == 0:
                    continue
                total += float(loaded.model(input_ids=ids, labels=labels).loss) * n
                count += n
        loss = total / max(count, 1)
        results.append({"stage": index + 1, "method": "sft", "examples": len(prepared.eval), "tokens": count,
                        "eval_loss": loss, "perplexity": math.exp(loss)})
    if not results:
        raise NovaError("the run has no SFT holdout to evaluate", hint="set data.eval_split > 0 in its config")
    return results
