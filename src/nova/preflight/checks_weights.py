"""The weights check: what preflight can tell of a local model's files without loading them.

Headers only (nova.model.weights_check): a safetensors file cut off or longer than its header says,
an index naming missing files, a config.json whose shapes disagree with the stored tensors or whose
sizes describe a model far larger than its weights, an architecture transformers does not know.
Training and infer refuse the same files with the same line when they load them.
"""

from __future__ import annotations

from nova.config.schema import ModelConfig
from nova.errors import NovaError
from nova.preflight.model_source import ModelSource
from nova.preflight.report import Check


def check_weights(source: ModelSource, model: ModelConfig) -> list[Check]:
    """Fail on damaged or mismatched model files; no check where there is no local directory to read (the
    model check says so)."""
    if source.path is None or source.kind not in ("local", "hub_cached"):
        return []
    from nova.model.weights_check import check_model_dir, weight_files

    try:
        files = weight_files(source.path)
        if not files:
            return [Check("weights", "skip", f"no safetensors files in {source.path}")]
        check_model_dir(source.path, trust_remote_code=model.trust_remote_code)
    except NovaError as exc:
        return [Check("weights", "fail", exc.message, exc.hint or "")]
    return [Check("weights", "pass", f"{len(files)} safetensors file(s): headers and sizes intact, shapes match "
                  "config.json")]
