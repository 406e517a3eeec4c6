"""Inference: load a tuned model (run directory, merged model, or base + adapter) and answer prompts.

A run directory is loaded exactly as it was trained: the same base, quantized the same way,
with every phase's adapter of the chain stacked in order (see nova.model.adapters).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nova.config.schema import ModelConfig
from nova.errors import NovaError
from nova.lazy import require


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0

    def generate_kwargs(self, tokenizer: Any) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens,
                                  "pad_token_id": tokenizer.pad_token_id,
                                  "repetition_penalty": self.repetition_penalty}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
            if self.top_k:
                kwargs["top_k"] = self.top_k
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    description: str
    has_adapters: bool = False
    run_dir: Path | None = None

    def base_view(self) -> Any:
        """A context in which the model answers as its base (every adapter off), for --compare."""
        from contextlib import nullcontext

        return self.model.disable_adapter() if self.has_adapters else nullcontext()


def _render(tokenizer: Any, messages: list[dict[str, str]]) -> Any:
    if not getattr(tokenizer, "chat_template", None):
        text = "\n".join(m["content"] for m in messages)
        return tokenizer(text, return_tensors="pt").input_ids
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids


def text_streamer(tokenizer: Any) -> Any:
    """Print tokens as they are generated (the prompt itself is not echoed)."""
    transformers = require("transformers")
    return transformers.TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def generate_chat(model: Any, tokenizer: Any, messages: list[dict[str, str]],
                  sampling: Sampling | None = None, streamer: Any = None) -> str:
    """Answer one conversation; returns the assistant's new text."""
    torch = require("torch")
    sampling = sampling or Sampling()
    input_ids = _render(tokenizer, messages).to(model.device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer,
                             **sampling.generate_kwargs(tokenizer))
    if was_training:
        model.train()
    return tokenizer.decode(out[0, input_ids.shape[1]:], skip_special_tokens=True).strip()


def generate_answers(model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int = 128,
                     sampling: Sampling | None = None) -> list[str]:
    sampling = sampling or Sampling(max_new_tokens=max_new_tokens)
    return [generate_chat(model, tokenizer, [{"role": "user", "content": p}], sampling) for p in prompts]


def _run_chain(run_dir: Path) -> tuple[ModelConfig, list[tuple[str, Path]]]:
    """Read a run directory's resolved config: its base model and the adapters to stack, in order."""
    config_file = run_dir / "config.yaml"
    if not config_file.exists():
        raise NovaError(f"{run_dir} is not a nova run directory (no config.yaml)",
                        hint="pass a run directory written by nova train, a model directory, or --adapter")
    data = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    model_cfg = ModelConfig.model_validate(data["model"])
    adapters = [(c["phase"], Path(c["adapter"])) for c in data.get("_chain", [])]
    adapter = run_dir / "adapter"
    if not (adapter / "adapter_config.json").exists():
        raise NovaError(f"run directory {run_dir} has no adapter (training did not finish)",
                        hint="finish or resume training first")
    adapters.append((data["name"], adapter))
    return model_cfg, adapters


def load_model(path: str | Path, *, adapter: str | Path | None = None, base_only: bool = False,
               quantization: str | None = None) -> LoadedModel:
    """Load a run directory (as trained), a plain model directory, or a base plus ``adapter``."""
    from nova.model.adapters import AdapterRef, stack_frozen
    from nova.model.loading import choose_placement, load_base_model, load_tokenizer, resolve_base

    path = Path(path)
    if (path / "config.yaml").exists() and not (path / "config.json").exists():
        model_cfg, adapters = _run_chain(path)
    else:
        model_cfg = ModelConfig(base=str(path), quantization="none")
        adapters = [("adapter", Path(adapter))] if adapter else []
    if quantization is not None:
        model_cfg = model_cfg.model_copy(update={"quantization": quantization})
    source = resolve_base(model_cfg)
    placement = choose_placement(model_cfg.compute_dtype)
    tokenizer = load_tokenizer(model_cfg, source)
    model = load_base_model(model_cfg, placement, source)
    if adapters and not base_only:
        model = stack_frozen(model, [AdapterRef(n, p) for n, p in adapters])
        from nova.model.adapters import activate

        activate(model, [n for n, _ in adapters])
    model.eval()
    stacked = bool(adapters) and not base_only
    names = " + ".join(n for n, _ in adapters) if stacked else "no adapter"
    run_dir = path if (path / "config.yaml").exists() else None
    return LoadedModel(model, tokenizer, f"{source} ({model_cfg.quantization}) + {names}", stacked, run_dir)


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
    from nova.config.schema import PhaseConfig
    from nova.data import prepare_stage_data

    if loaded.run_dir is None:
        raise NovaError("--eval needs a run directory (it re-creates the run's holdout split)")
    data = yaml.safe_load((loaded.run_dir / "config.yaml").read_text(encoding="utf-8"))
    phase = PhaseConfig.model_validate({k: v for k, v in data.items() if not k.startswith("_")})
    results = []
    for index, stage in enumerate(phase.stage_list):
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
