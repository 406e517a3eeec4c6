"""``merge_run``: check the inputs, merge in fp32, verify parity, write atomically (see nova.merge)."""


from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nova.files import dir_size, human_bytes
from nova.merge.inputs import MergeRequest, plan_merge
from nova.merge.parity import Parity, encode_conversations
from nova.merge.weights import Say, merge_in_fp32
from nova.merge.write import (
    as_id_list,
    restore_padding_side,
    serve_system_prompt,
    write_verified,
)


@dataclass
class MergeResult:
    """What a merge wrote and measured, for the CLI to print (``lines``) or emit as JSON (``to_dict``)."""

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
        """The report ``nova merge`` prints: what was merged, the parity figures, eos ids and sizes."""
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
        """The same figures for ``nova merge --json`` (keys as in nova_merge.json where they overlap)."""
        return {"out_dir": str(self.out_dir), "dtype": self.dtype, "from": self.source, "adapters": self.adapters,
                "parity": self.parity.__dict__, "eos_token_ids": self.eos_token_ids,
                "output_bytes": self.output_bytes, "checkpoint_bytes": self.checkpoint_bytes,
                "seconds": round(self.seconds, 1)}


def _quiet(_: str) -> None:
    """The default ``say``: a library call prints nothing unless the caller asks for progress."""


def merge_run(request: MergeRequest, say: Say = _quiet) -> MergeResult:
    """Check the inputs, merge the chain in fp32, verify parity, write the model atomically."""
    from nova.model.loading import load_tokenizer

    started = time.time()
    plan = plan_merge(request)
    inputs = plan.inputs
    tokenizer = load_tokenizer(inputs.model_cfg, plan.source)
    restore_padding_side(tokenizer, plan.source)
    plan.system = serve_system_prompt(tokenizer, inputs.record)
    batches = encode_conversations(tokenizer, inputs.conversations)
    model, merged, parity = merge_in_fp32(plan, batches, request.tolerance, say)
    gen = write_verified(plan, model, tokenizer, batches, merged, parity, request.tolerance, say)
    notes = [] if inputs.model_cfg.quantization != "none" else [
        "the run used quantization: none, so --from does not matter"]
    notes.append(f"system prompt of chats without one (in the merged chat template): {plan.system.describe()}")
    return MergeResult(plan.out, plan.dtype_name, plan.source_kind, [r.name for r in inputs.adapters], parity,
                       as_id_list(gen.eos_token_id), dir_size(plan.out), dir_size(inputs.record.run.checkpoints_root),
                       time.time() - started, notes)
