"""A finished run opened for export: its base, tokenizer, system prompt, check prompts and trained composition.

``nova export --run`` ships what the run trained. The adapters of a QLoRA run were trained over the
base's nf4 weights, so the base an exported adapter belongs to is those weights dequantized (the
default, ``--from dequantized``), written from the very bitsandbytes modules training used (the
code ``nova merge`` uses: nova.merge.weights); ``--from original`` ships the original weights
instead, an explicit choice that is recorded and warned about with its measured difference.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nova.errors import NovaError

Say = Callable[[str], None]
MAX_HOLDOUT_CHATS = 4  # a check, not an evaluation: a few chats and the smoke prompts
MAX_CHECK_TOKENS = 256  # per sequence: llama.cpp scores every position of each in one decode
FALLBACK_PROMPTS = ("What is the capital of France?", "Explain gradient descent in one sentence.")


@dataclass
class RunSource:
    """What an export of a run needs before any weights load."""

    inputs: Any  # nova.merge.inputs.MergeInputs: the record, adapters (oldest first), located model config
    source: str  # the base model directory
    tokenizer: Any  # the run's, with its system prompt in the chat template (nova.data.system.with_default)
    system: Any  # nova.data.system.SystemPrompt
    conversations: list[list[dict[str, str]]]
    batches: list[Any]  # the conversations as 1 x n token tensors (the run's template)
    held_out: int = 0  # how many of the conversations are held-out records (the rest: smoke or fixed prompts)

    @property
    def record(self) -> Any:
        return self.inputs.record

    @property
    def quantized(self) -> bool:
        return self.inputs.model_cfg.quantization != "none"


def open_run(run_dir: Path) -> RunSource:
    """Read a finished run (live and unfinished runs are refused), locate its base, tokenize the check prompts."""
    from nova.data.system import run_system, with_default
    from nova.merge.inputs import read_inputs
    from nova.merge.parity import encode_conversations
    from nova.model.loading import load_tokenizer, resolve_base

    inputs = read_inputs(Path(run_dir).expanduser(), command="nova export")
    source = resolve_base(inputs.model_cfg)
    tokenizer = load_tokenizer(inputs.model_cfg, source)
    system = run_system(inputs.record, tokenizer)
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        tokenizer.chat_template = with_default(tokenizer.chat_template, system)
    conversations = check_conversations(inputs.record, system.messages())
    batches = encode_conversations(tokenizer, conversations, MAX_CHECK_TOKENS)
    held_out = sum(1 for c in conversations if c[-1]["role"] == "assistant")
    return RunSource(inputs, source, tokenizer, system, conversations, batches, held_out)


def check_conversations(record: Any, head: list[dict[str, str]]) -> list[list[dict[str, str]]]:
    """The run's held-out chats (the records training held out, with their system prompt) and its smoke
    prompts (after the run's system prompt); two fixed prompts when the run has neither."""
    from nova.data.pipeline import holdout_chats
    from nova.runs.locate import located_data

    chats: list[list[dict[str, str]]] = []
    for stage in record.phase.stage_list:
        if len(chats) >= MAX_HOLDOUT_CHATS or stage.spec.generates:  # prompts only: no reply to hold out
            continue
        chats += holdout_chats(located_data(record, stage.data), method=stage.method, seed=stage.training.seed,
                               limit=MAX_HOLDOUT_CHATS - len(chats))
    prompts = list(record.phase.smoke_prompts) or ([] if chats else list(FALLBACK_PROMPTS))
    return chats + [[*head, {"role": "user", "content": str(p)}] for p in prompts]


def exact_inputs(run: RunSource) -> Any:
    """The run's inputs with fp32 compute: the trained weights (the same nf4 base, the same adapters) in
    exact arithmetic. A bf16 composition (a GPU's default) rounds every activation, and an f16 GGUF
    agreed with it on only 97.5% of next tokens where it agrees with the fp32 one on 99.7% (SmolLM2-135M,
    bf16 emulated on a CPU): the check measures the export, not the precision it is compared in."""
    return replace(run.inputs, model_cfg=run.inputs.model_cfg.changed(compute_dtype="fp32"))


def trained_logits(run: RunSource, want_weights: bool, say: Say) -> tuple[list[Any], dict[str, Any]]:
    """The trained composition's logits on the check prompts (fp32 compute), and its base weights
    dequantized (when asked and quantized)."""
    from nova.merge.weights import quantized_composition

    return quantized_composition(exact_inputs(run), run.source, run.batches, want_weights and run.quantized, say)


def full_precision_base(run: RunSource, weights: dict[str, Any], say: Say) -> Any:
    """The base in fp32: the dequantized trained-on weights put in (``weights``), or the original ones."""
    from nova.merge.weights import load_full_precision

    model = load_full_precision(run.inputs, run.source, weights, say)
    weights.clear()
    gc.collect()
    return model


def base_note(run: RunSource, kind: str) -> str:
    """What the card and nova_export.json say about the base an exported adapter belongs to."""
    cfg = run.inputs.model_cfg
    name = Path(run.source).name
    if not run.quantized:
        return f"`{name}` as it is (the run trained on its unquantized weights: quantization none)"
    quant = f"{cfg.quantization}{' with double quantization' if cfg.double_quant else ''}"
    if kind == "dequantized":
        return (f"`{name}` as training saw it: its {quant} weights, dequantized (the adapters were trained over "
                "them; this base plus the adapter is the trained model)")
    return (f"`{name}`'s ORIGINAL weights (--from original): the adapters were trained over its {quant} weights, so "
            "base plus adapter here is not the model that was trained and evaluated (see the check's figures against "
            "the trained model)")


def refuse_full(run: RunSource) -> None:
    if run.record.full:
        raise NovaError("a full fine-tuning run has no adapter to export", hint="nova export --model RUN/model")
