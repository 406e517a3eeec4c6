"""Model cards: the README.md (with the hub's YAML front matter) of every adapter, merged model and export.

A card says what the directory is and what a user needs to use it without nova: the base, the
chain of phases (and, for a chained phase's own adapter, that it needs the earlier ones), the data
with record counts and licenses, the hyperparameters, the eval loss of each phase (and the
forgetting figures once pipeline.json has them), how to load it with transformers, PEFT, vLLM,
llama.cpp or Ollama, and nova's version. Facts come from ``nova.runs.card_facts``.

Kinds: ``adapter`` (a phase's ``adapter/``), ``stage`` (a stage's adapter inside the run),
``standalone`` (``nova export --format peft``), ``merged`` (``nova merge``) and ``ollama`` /
``gguf`` (export directories).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from nova import __version__
from nova.files import write_text_atomic
from nova.runs.card_facts import PhaseFacts, base_license, chain_facts, hub_id, json_line, portable_base

if TYPE_CHECKING:
    from nova.runs.record import RunRecord

CARD = "README.md"
_LIBRARY = {"adapter": "peft", "stage": "peft", "standalone": "peft", "merged": "transformers", "ollama": "gguf",
            "gguf": "gguf"}
_WHAT = {
    "adapter": "the LoRA adapter of phase {phase}",
    "stage": "the LoRA adapter of phase {phase} after its stage {stage} (an intermediate result; the phase's "
             "final adapter is its adapter/ directory)",
    "standalone": "one standalone LoRA adapter equal to the base plus every adapter of the chain {chain}",
    "merged": "a merged model: the base with every adapter of the chain {chain} added into its weights",
    "ollama": "an Ollama model directory of the chain {chain}",
    "gguf": "GGUF files of the chain {chain} for llama.cpp",
}


def _front_matter(record: RunRecord, kind: str, methods: list[str]) -> str:
    meta: dict[str, Any] = {}
    base = hub_id(record.model.base)
    if base:
        meta["base_model"] = base
    meta["library_name"] = _LIBRARY[kind]
    license_ = base_license(record.model.base)
    if license_:
        meta["license"] = license_
    tags = ["nova", *(["lora", "peft"] if _LIBRARY[kind] == "peft" else []), *sorted(set(methods))]
    tags += {"ollama": ["gguf", "ollama"], "gguf": ["gguf", "llama.cpp"]}.get(kind, [])
    meta["tags"] = tags
    meta["pipeline_tag"] = "text-generation"
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _requires(record: RunRecord, kind: str) -> list[str]:
    """The warning a chained phase's own adapter carries: alone on the base it is another model."""
    if kind not in ("adapter", "stage") or not record.chain:
        return []
    earlier = ", ".join(f"`{r.name}`" for r in record.chain)
    return [
        "## Requires the earlier adapters", "",
        f"This adapter is only correct on top of the adapters of {earlier} (in that order, all active), on the "
        f"same base. Loaded alone on the base (plain PEFT, vLLM, TGI) it gives a different model, without an error.",
        "", "For something that stands alone:", "",
        f"- one PEFT adapter equal to the whole chain: `nova export --format peft --run {record.run.path.name} "
        "--out DIR`",
        f"- merged weights: `nova merge --run {record.run.path.name}`", "",
    ]


def _chain_table(phases: list[PhaseFacts]) -> list[str]:
    lines = ["## Chain of phases", "", "Applied oldest first; each phase trained its adapter with the earlier ones "
             "stacked and frozen on the same base.", "",
             "| # | phase | stages | LoRA r | alpha | dropout | rsLoRA | target modules | eval loss |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, phase in enumerate(phases, 1):
        lora = phase.lora
        stages = ", ".join(s.method for s in phase.stages) or "(run directory not found)"
        loss = phase.holdout_loss if phase.holdout_loss is not None else (
            phase.stages[-1].eval_loss if phase.stages else None)
        lines.append(f"| {i} | {phase.name} | {stages} | {lora.get('r', '')} | {lora.get('alpha', '')} | "
                     f"{lora.get('dropout', '')} | {lora.get('use_rslora', '')} | "
                     f"{json_line(lora.get('target_modules', ''))} | {_num(loss)} |")
    return [*lines, ""]


def _num(value: float | None) -> str:
    return "not recorded" if value is None else f"{value:.4f}"


def _data_table(phases: list[PhaseFacts]) -> list[str]:
    lines = ["## Training data", "", "Records as nova's data report counted them (read, kept after validation); "
             "train/eval are the stage's totals after dedup, split and mixing. Licenses come from a README.md "
             "beside each file.", "",
             "| stage | source | format | read | kept | train / eval records | license |",
             "|---|---|---|---|---|---|---|"]
    for phase in phases:
        for stage in phase.stages:
            for src in stage.sources:
                formats = ", ".join(f"{k} {v}" for k, v in src["formats"].items()) or "not recorded"
                lines.append(f"| {stage.label} | {src['name']} | {formats} | {_count(src['read'])} | "
                             f"{_count(src['kept'])} | {_count(stage.train_records)} / {_count(stage.eval_records)} | "
                             f"{src['license'] or 'not stated (no README.md with a license beside the file)'} |")
    return [*lines, ""]


def _count(value: Any) -> str:
    return "not recorded" if value is None else str(value)


def _settings_table(phases: list[PhaseFacts]) -> list[str]:
    lines = ["## Hyperparameters", "", "| stage | method | settings |", "|---|---|---|"]
    for phase in phases:
        for stage in phase.stages:
            shown = ", ".join(f"{k} {v}" for k, v in stage.settings.items() if v is not None)
            lines.append(f"| {stage.label} | {stage.method} | {shown} |")
    return [*lines, ""]


def _eval_table(phases: list[PhaseFacts]) -> list[str]:
    lines = ["## Evaluation", "", "Last logged losses of each stage (eval: the stage's holdout).", "",
             "| stage | train loss | eval loss |", "|---|---|---|"]
    for phase in phases:
        for stage in phase.stages:
            lines.append(f"| {stage.label} | {_num(stage.train_loss)} | {_num(stage.eval_loss)} |")
    lines.append("")
    for phase in phases:
        if phase.forgetting:
            lines += [f"Forgetting: the holdout loss of each earlier phase when it finished (of a retention set: "
                      f"at the start of {phase.name}) and after {phase.name}.", "",
                      "| earlier phase or retention set | eval loss before | eval loss after | change |",
                      "|---|---|---|---|"]
            for earlier, v in phase.forgetting.items():
                delta = v["eval_loss_after"] - v["eval_loss_before"]
                name = earlier.replace("retention:", "retention set ", 1)
                lines.append(f"| {name} | {v['eval_loss_before']:.4f} | {v['eval_loss_after']:.4f} | "
                             f"{delta:+.4f} |")
            lines.append("")
    return lines


def _task_table(record: RunRecord) -> list[str]:
    """The run's eval.json (nova eval, eval gates): every model's task scores with their changes."""
    from nova.runs.eval_results import gate_lines, legend, read_eval, table_lines

    results = read_eval(record.run)
    lines = table_lines(results) if results else []
    if not lines:
        return []
    return ["## Task scores", "", f"Scored by `nova eval` on the same items for every model ({legend()}).", "",
            "```", *lines, "```", "", *[f"- {g}" for g in gate_lines(results or {})], ""]


def _usage(record: RunRecord, kind: str, extra: dict[str, Any]) -> list[str]:
    from nova.runs.card_usage import usage_lines

    return usage_lines(record, kind, extra)


def render(record: RunRecord, kind: str, **extra: Any) -> str:
    """The whole README.md of a directory of ``kind`` made from the run ``record``."""
    phases = chain_facts(record)
    methods = [s.method for p in phases for s in p.stages]
    chain = " -> ".join(p.name for p in phases)
    what = _WHAT[kind].format(phase=record.name, stage=extra.get("stage", ""), chain=chain)
    intro = [f"# {record.name}: {kind} model card", "",
             f"This directory holds {what}, trained with nova {__version__} on the base "
             f"`{portable_base(record.model.base)}` (quantization during training: {record.model.quantization}).",
             ""]
    from nova.runs.card_export import export_lines, system_lines

    body = [*intro, *_requires(record, kind), *export_lines(extra), *system_lines(record, extra),
            *_chain_table(phases), *_data_table(phases), *_settings_table(phases), *_eval_table(phases),
            *_task_table(record), *_usage(record, kind, extra),
            f"Made with nova {__version__} from the run directory `{record.run.path.name}`.", ""]
    return _front_matter(record, kind, methods) + "\n" + "\n".join(body)


def write_card(directory: Path, record: RunRecord, *, kind: str, **extra: Any) -> Path:
    """Write ``directory/README.md`` (replacing PEFT's empty template) and return its path."""
    path = Path(directory) / CARD
    write_text_atomic(path, render(record, kind, **extra))
    return path


def write_run_cards(record: RunRecord) -> None:
    """Cards for a finished phase's adapter and its stages' adapters, again (``nova eval`` stores new scores)."""
    from nova.runs.layout import has_adapter

    if has_adapter(record.run.adapter):
        write_card(record.run.adapter, record, kind="adapter")
    for name in record.stage_names:
        if has_adapter(record.run.stage_adapter(name)):
            write_card(record.run.stage_adapter(name), record, kind="stage", stage=name)


MERGE_INFO = "nova_merge.json"  # written by nova.merge.write beside a merged model; its run_dir is relative


def _merge_info(model_dir: Path) -> dict[str, Any]:
    from nova.runs.jsonl import read_json

    return read_json(Path(model_dir) / MERGE_INFO) or {}


def run_of_model_dir(model_dir: Path) -> RunRecord | None:
    """The run a merged model directory was made from (its nova_merge.json), when that run is still there."""
    from nova.errors import NovaError
    from nova.runs.jsonl import read_json
    from nova.runs.record import read_run

    info = read_json(Path(model_dir) / MERGE_INFO) or {}
    recorded = info.get("run_dir")
    if not isinstance(recorded, str):
        return None
    try:
        return read_run((Path(model_dir) / recorded).resolve())
    except NovaError:
        return None


def model_dir_card(model_dir: Path, kind: str, export: dict[str, Any] | None = None) -> str:
    """The card of an export of ``model_dir``: its run's full card when known, else what the directory says."""
    from nova.runs.card_export import export_lines
    from nova.runs.card_facts import front_matter

    record = run_of_model_dir(model_dir)
    if record is not None:
        merged = _merge_info(model_dir).get("system_prompt")
        return render(record, kind, here=".", export=export, **({"system": merged} if merged else {}))
    known = front_matter(Path(model_dir) / CARD)
    meta = {k: known[k] for k in ("base_model", "license") if k in known}
    meta.update({"library_name": _LIBRARY[kind], "tags": ["nova", "gguf", *(["ollama"] if kind == "ollama" else [])],
                 "pipeline_tag": "text-generation"})
    name = Path(model_dir).resolve().name
    body = [f"# {name}: {kind} export", "",
            f"Exported by nova {__version__} from the model directory `{name}`. It was not merged by nova (no "
            f"{MERGE_INFO}), or its run directory is gone, so how it was trained is not recorded here; see the "
            "model directory's own card.", "", "## How to use", "", "```bash",
            "ollama create NAME -f Modelfile && ollama run NAME" if kind == "ollama" else
            "llama-cli -m <the .gguf file here> -cnv", "```", "", *export_lines({"export": export})]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n\n" + "\n".join(body)
