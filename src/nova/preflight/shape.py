"""The architecture facts the memory estimate needs, read from a model's config.json alone.

Only what sets memory is kept: widths, depth, heads, vocabulary, tied embeddings and MoE
routing. Names differ between families (``n_embd``, ``d_model``), and a multimodal config holds
its language model under ``text_config``; both are handled here so the estimate sees one shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nova.errors import NovaError


@dataclass(frozen=True)
class ModelShape:
    """The architecture facts the estimate needs (all from config.json)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tie_embeddings: bool
    experts: int = 1
    experts_per_token: int = 1

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer of one decoder layer."""
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def linear_params(self) -> int:
        """Parameters in the decoder layers' linear layers (the ones bitsandbytes quantizes)."""
        per_layer = 0
        for name, (fan_in, fan_out) in self.linear_shapes().items():
            mult = self.experts if name in ("gate_proj", "up_proj", "down_proj") else 1
            per_layer += fan_in * fan_out * mult
        return per_layer * self.layers

    @property
    def largest_linear(self) -> int:
        """Elements of the largest single weight matrix (what one dequantization buffer holds)."""
        return max(i * o for i, o in self.linear_shapes().values())

    @property
    def embedding_params(self) -> int:
        """Input embedding plus an untied lm_head (both stay 16-bit under bitsandbytes)."""
        return self.vocab * self.hidden * (1 if self.tie_embeddings else 2)

    @property
    def norm_params(self) -> int:
        return self.hidden * (2 * self.layers + 1)

    @property
    def total_params(self) -> int:
        return self.linear_params + self.embedding_params + self.norm_params


def _first(cfg: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if cfg.get(key) is not None:
            return cfg[key]
    return default


def _intermediate(cfg: dict[str, Any], hidden: int) -> int:
    """Width of one MLP projection. Qwen (v1) configs give the sum of w1 and w2 (22016 for 7B)."""
    width = int(_first(cfg, "intermediate_size", "n_inner", "ffn_dim", default=4 * hidden))
    return width // 2 if cfg.get("model_type") == "qwen" else width


def model_shape(config: dict[str, Any]) -> ModelShape:
    """Read a HF config.json dict (a multimodal one through its ``text_config``)."""
    cfg = config.get("text_config") or config
    hidden = _first(cfg, "hidden_size", "n_embd", "d_model")
    layers = _first(cfg, "num_hidden_layers", "n_layer", "num_layers")
    heads = _first(cfg, "num_attention_heads", "n_head")
    vocab = _first(cfg, "vocab_size")
    missing = [name for name, value in (("hidden_size", hidden), ("num_hidden_layers", layers),
                                        ("num_attention_heads", heads), ("vocab_size", vocab)) if value is None]
    if missing:
        raise NovaError(f"config.json lacks {', '.join(missing)}", hint="preflight needs a decoder-only LM config")
    head_dim = _first(cfg, "head_dim", "kv_channels", default=None) or int(hidden) // int(heads)
    return ModelShape(
        hidden=int(hidden), layers=int(layers), heads=int(heads),
        kv_heads=int(_first(cfg, "num_key_value_heads", "n_head_kv", default=heads)),
        head_dim=int(head_dim),
        intermediate=_intermediate(cfg, int(hidden)),
        vocab=int(vocab),
        # transformers' llama-family configs default to untied; the key is explicit in most files.
        tie_embeddings=bool(_first(cfg, "tie_word_embeddings", default=False)),
        experts=int(_first(cfg, "num_local_experts", "num_experts", default=1)),
        experts_per_token=int(_first(cfg, "num_experts_per_tok", default=1)),
    )
