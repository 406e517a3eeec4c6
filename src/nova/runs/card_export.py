"""The parts of a model card that say what a served model is: its system prompt, and for an export the
base its adapter belongs to and the parity check (files only, no torch: train, merge and export call it)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nova.runs.record import RunRecord


def _system_dict(record: RunRecord, extra: dict[str, Any]) -> dict[str, Any] | None:
    given = extra.get("system")
    if given is not None:
        return given.to_dict() if hasattr(given, "to_dict") else dict(given)
    recorded = record.resolved.get("system_prompt")
    return recorded if isinstance(recorded, dict) else None


def system_lines(record: RunRecord, extra: dict[str, Any]) -> list[str]:
    """The card's "System prompt" section: what chats without a system message were trained with, and
    so what a runtime should send (the merged model's and GGUF's chat template and the Modelfile do)."""
    system = _system_dict(record, extra)
    lines = ["## System prompt", ""]
    if system is None:
        return [*lines, "Not recorded (a run from an older nova).", ""]
    source, text = system.get("source"), system.get("text")
    if source == "config":
        what = f"`data.system_prompt`: {json.dumps(text)}"
    elif source == "empty":
        what = "an empty system message (`data.default_system: none`)"
    elif source == "template":
        chosen = "" if system.get("chosen", True) else " (the config did not choose it)"
        what = f"the chat template's own default, {json.dumps(text)}{chosen}"
    else:
        what = "none: the chat template writes no system turn by default"
    return [*lines, f"Chats without a system message were trained with {what}. Serve them the same way: nova infer "
            "and nova's exports do (the Ollama Modelfile's SYSTEM, the chat template of a merged model and of its "
            "GGUF).", ""]


def export_lines(extra: dict[str, Any]) -> list[str]:
    """The card's "Export" section: the base the adapter belongs to, and the parity figures."""
    info = extra.get("export")
    if not isinstance(info, dict):
        return []
    lines = ["## Export", ""]
    base = info.get("base")
    if isinstance(base, dict) and base.get("note"):
        lines += [f"Base: {base['note']}", ""]
    parity = info.get("parity")
    if isinstance(parity, dict):
        lines += parity_lines(parity)
    return lines


def parity_lines(parity: dict[str, Any]) -> list[str]:
    """The parity check as the card shows it (the same figures as nova_export.json)."""
    if parity.get("skipped"):
        return [f"Parity check: not run ({parity['skipped']}).", ""]
    line = (f"Parity check: {parity.get('candidate')} against {parity.get('reference')}, on "
            f"{parity.get('sequences')} held-out chats and prompts ({parity.get('tokens')} positions): next-token "
            f"agreement {_pct(parity.get('agreement'))}, largest logit difference "
            f"{_num(parity.get('max_logit_diff'))} (threshold for {parity.get('outtype')}: agreement at least "
            f"{_pct(parity.get('min_agreement'))}" + (f", logit difference at most {_num(parity['max_allowed_diff'])}"
                                                     if parity.get("max_allowed_diff") is not None else "") + ").")
    lines = [line, ""]
    trained = parity.get("vs_trained")
    if isinstance(trained, dict):
        lines += [f"Against the trained model (the adapters over the quantized base they were trained on): agreement "
                  f"{_pct(trained.get('agreement'))}, largest logit difference {_num(trained.get('max_logit_diff'))}.",
                  ""]
    return lines


def _pct(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, int | float) else "not recorded"


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else "not recorded"
