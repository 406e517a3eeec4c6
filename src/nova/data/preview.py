"""Show examples exactly as the model will see them, with the trained tokens marked.

The text is the chat template's rendering; every run of tokens that carries loss is wrapped
in ``[[`` and ``]]`` (ASCII markers, so the output survives any terminal and log file). A
wrong template, a masked end-of-turn token or a trained system prompt is visible at a glance.
"""

from __future__ import annotations

import json
from typing import Any

from nova.config.data_schema import DataConfig
from nova.data.encode import IGNORE, ChatTemplate, Encoder
from nova.data.load import LoadContext, load_sources
from nova.data.records import RecordProblem
from nova.data.report import DataReport
from nova.data.turns import TurnSettings
from nova.methods import method_spec

OPEN, CLOSE = "[[", "]]"


def preview(cfg: DataConfig, tokenizer: Any, *, method: str, n: int = 3) -> list[str]:
    """Lines showing the first ``n`` valid examples of the stage's training sources."""
    report = DataReport(method=method)
    loaded = load_sources(list(cfg.datasets), LoadContext(method, cfg.inserted_system, report))
    examples = loaded[:n]
    name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
    template = ChatTemplate(tokenizer, name) if getattr(tokenizer, "chat_template", None) else None
    notes = _system_lines(cfg, template, loaded)
    encoder = Encoder(tokenizer, template, method=method, max_length=cfg.max_length, overlong=cfg.overlong,
                      loss_on=cfg.loss_on, max_prompt_length=cfg.max_length, max_completion_length=cfg.max_length,
                      turns=TurnSettings(cfg.rewritten_turns, cfg.train_empty_think))
    out = [f"{len(examples)} example(s); trained tokens are wrapped in {OPEN} {CLOSE}", *notes]
    for i, ex in enumerate(examples, 1):
        try:
            shown = _show(ex.example, tokenizer, encoder, method)
        except RecordProblem as exc:
            out += [f"--- example {i} ({ex.where}) ---", f"cannot render: {exc.message}"]
            continue
        for k, text in enumerate(shown, 1):
            of = f", sequence {k} of {len(shown)}: one per trained reply, the template rewrites history" \
                if len(shown) > 1 else ""
            out.append(f"--- example {i} ({ex.where}){of} ---")
            out += text.splitlines()
    if report.problem_count:
        out.append(f"({report.problem_count} invalid record(s) not shown; run 'nova data check')")
    return out


def _system_lines(cfg: DataConfig, template: ChatTemplate | None, loaded: list[Any]) -> list[str]:
    """The system prompt chats without one are trained (and served) with, and the note when the config
    did not choose the template's default."""
    from nova.data.system import chats_without_system, default_note, served_system

    system = served_system(cfg, template)
    lines = [f"system prompt: {system.describe()}"]
    note = default_note(system, *chats_without_system(loaded))
    return lines + ([f"note: {note}"] if note else [])


def _show(example: dict[str, Any], tokenizer: Any, encoder: Encoder, method: str) -> list[str]:
    """The example's sequences as text, trained tokens marked (a chat may be several sequences)."""
    records = method_spec(method).records
    if records == "prompts":  # nothing is trained: the prompt as the model sees it, and what the rewards get
        row = encoder({"example": [json.dumps(example)]})
        if row["status"][0].startswith("error:"):
            raise RecordProblem("template_error", row["status"][0].split(":", 2)[2])
        fields = json.dumps(example["fields"], ensure_ascii=True, default=str)
        return [f"{tokenizer.decode(row['prompt_ids'][0])}\n=== the model answers; rewards get {fields} ==="]
    if records == "feedback":
        row = encoder({"example": [json.dumps(example)]})
        if row["status"][0].startswith("error:"):
            raise RecordProblem("template_error", row["status"][0].split(":", 2)[2])
        verdict = "desirable" if row["label"][0] else "undesirable"
        prompt, reply = tokenizer.decode(row["prompt_ids"][0]), tokenizer.decode(row["completion_ids"][0])
        return [f"{prompt}\n=== {verdict} ===\n{OPEN}{reply}{CLOSE}"]
    if records == "pairs":
        row = encoder({"example": [json.dumps(example)]})
        if row["status"][0].startswith("error:"):
            raise RecordProblem("template_error", row["status"][0].split(":", 2)[2])
        prompt = tokenizer.decode(row["prompt_ids"][0])
        chosen = tokenizer.decode(row["chosen_ids"][0])
        rejected = tokenizer.decode(row["rejected_ids"][0])
        return [f"{prompt}\n=== chosen ===\n{OPEN}{chosen}{CLOSE}\n=== rejected ===\n{OPEN}{rejected}{CLOSE}"]
    if example["kind"] == "text":
        text = example["text"]
        return [f"{OPEN}{text}{CLOSE} (+ eos)"]
    out = []
    for seq in encoder._sequences(example)[0]:
        enc = encoder.backend.encode(seq.text, add_special_tokens=False)
        _, labels = encoder._chat_labels(enc, seq.text, seq.spans)
        out.append(_mark(seq.text, enc.offsets, labels))
    return out


def _mark(text: str, offsets: list[tuple[int, int]], labels: list[int]) -> str:
    """Wrap the characters of each run of trained tokens in the markers."""
    runs: list[tuple[int, int]] = []
    for (start, end), label in zip(offsets, labels, strict=True):
        if label == IGNORE:
            continue
        if runs and start <= runs[-1][1]:
            runs[-1] = (runs[-1][0], max(end, runs[-1][1]))
        else:
            runs.append((start, end))
    out, pos = [], 0
    for start, end in runs:
        out += [text[pos:start], OPEN, text[start:end], CLOSE]
        pos = end
    out.append(text[pos:])
    return "".join(out)
