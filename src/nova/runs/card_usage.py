"""The "How to use" part of a model card: commands for transformers, PEFT, vLLM, llama.cpp and Ollama.

Each kind of directory gets the loaders that fit it; paths are written as the directory's name
and the base as configured, so the commands work where the user copies them to.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nova.runs.record import RunRecord

REQUIRES_KEY = "nova_requires_adapters"


def _peft_lines(record: RunRecord, here: str, kind: str, rank: Any) -> list[str]:
    from nova.runs.card_facts import hub_id, portable_base

    base = portable_base(record.model.base)
    if kind in ("adapter", "stage") and record.chain:
        loads = [f'model = PeftModel.from_pretrained(base, "{record.chain[0].path.parent.name}/adapter", '
                 f'adapter_name="{record.chain[0].name}")']
        loads += [f'model.load_adapter("{r.path.parent.name}/adapter", adapter_name="{r.name}")'
                  for r in record.chain[1:]]
        names = [r.name for r in record.chain] + [record.name]
        loads += [f'model.load_adapter("{here}", adapter_name="{record.name}")',
                  f"model.base_model.set_adapter({json.dumps(names)})  # all active, summed as trained"]
    else:
        loads = [f'model = PeftModel.from_pretrained(base, "{here}")']
    local = [] if hub_id(record.model.base) else [f"# {base}: the base model's directory (a local model, not a hub id)"]
    lines = ["PEFT (transformers):", "", "```python", "from peft import PeftModel",
             "from transformers import AutoModelForCausalLM, AutoTokenizer", "", *local,
             f'base = AutoModelForCausalLM.from_pretrained("{base}")',
             f'tokenizer = AutoTokenizer.from_pretrained("{base}")', *loads, "```", ""]
    if kind == "standalone":
        lines += ["vLLM (one `r` and `lora_alpha` for every module, so no rank_pattern is needed):", "", "```bash",
                  f"vllm serve {base} --enable-lora --lora-modules {record.name}={here} --max-lora-rank "
                  f"{_vllm_rank(rank)}", "```", ""]
    return lines


def _vllm_rank(rank: Any) -> int:
    """The smallest of vLLM's allowed --max-lora-rank values that holds ``rank``."""
    for allowed in (8, 16, 32, 64, 128, 256, 320, 512):
        if isinstance(rank, int) and rank <= allowed:
            return allowed
    return int(rank) if isinstance(rank, int) else 64


def _llama_cpp_lines(record: RunRecord, kind: str) -> list[str]:
    from nova.runs.card_facts import portable_base

    run = record.run.path.name
    if kind in ("merged",):
        return ["llama.cpp and Ollama:", "", "```bash",
                "nova export --model . --format gguf --outtype q4_k_m --out model-q4_k_m.gguf",
                "llama-cli -m model-q4_k_m.gguf -cnv   # the GGUF carries the chat template",
                "nova export --model . --format ollama --out ollama && cd ollama && ollama create NAME -f Modelfile",
                "```", ""]
    if kind in ("ollama", "gguf"):
        return ["llama.cpp and Ollama:", "", "```bash", "ollama create NAME -f Modelfile && ollama run NAME",
                "llama-cli -m <the .gguf file here> -cnv   # the GGUF carries the chat template", "```", ""]
    return ["llama.cpp (the base as GGUF, this chain as a GGUF LoRA adapter):", "", "```bash",
            f"nova export --model {portable_base(record.model.base)} --format gguf --out base-f16.gguf",
            f"nova export --run {run} --format gguf --out {run}-lora.gguf",
            f"llama-cli -m base-f16.gguf --lora {run}-lora.gguf -cnv", "```", "",
            f"Ollama: `nova export --run {run} --format ollama --out DIR` writes both GGUF files and a Modelfile "
            "with FROM and ADAPTER lines.", ""]


def usage_lines(record: RunRecord, kind: str, extra: dict[str, Any]) -> list[str]:
    """The card's "How to use" section for a directory of ``kind``."""
    here = extra.get("here") or {"adapter": f"{record.run.path.name}/adapter"}.get(kind, ".")
    lines = ["## How to use", ""]
    if kind in ("adapter", "stage", "standalone"):
        lines += _peft_lines(record, here, kind, extra.get("rank"))
    elif kind == "merged":
        lines += ["transformers:", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  'model = AutoModelForCausalLM.from_pretrained(".")',
                  'tokenizer = AutoTokenizer.from_pretrained(".")  # with the chat template', "```", ""]
    lines += ["nova (composes the chain exactly as trained):", "", "```bash",
              f'nova infer --model {record.run.path.name} --prompt "Hello"', "```", ""]
    return lines + _llama_cpp_lines(record, kind)


def mark_requires(adapter_dir: Path, record: RunRecord) -> None:
    """Record in a chained phase's adapter_config.json which adapters it needs below it.

    PEFT ignores the key (with a warning that names it); a person or a tool reading the file sees
    that the adapter alone on the base is not the trained model.
    """
    if not record.chain:
        return
    from nova.files import write_text_atomic
    from nova.runs.layout import ADAPTER_CONFIG

    path = Path(adapter_dir) / ADAPTER_CONFIG
    config = json.loads(path.read_text(encoding="utf-8"))
    config[REQUIRES_KEY] = {
        "adapters": [r.name for r in record.chain],
        "note": f"only correct on top of {', '.join(r.name for r in record.chain)} (all active, same base); "
                f"for one standalone adapter: nova export --format peft --run {record.run.path.name} --out DIR",
    }
    write_text_atomic(path, json.dumps(config, indent=2, sort_keys=True) + "\n")
