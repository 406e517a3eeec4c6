"""A run's whole adapter chain as one GGUF LoRA adapter (llama.cpp ``--lora``, Ollama ``ADAPTER``).

For users who keep the base separate: the chain is folded into one adapter exactly as for
``--format peft`` (``nova.export.peft_chain.combine``: scales in B, one rank), then written the way
llama.cpp's ``convert_lora_to_gguf.py`` writes a PEFT adapter: ``general.type = adapter``,
``adapter.type = lora``, ``adapter.lora.alpha``, and for every module the tensors
``<base tensor>.lora_a`` (numpy shape r x in) and ``<base tensor>.lora_b`` (out x r), named as in
the base's GGUF. llama.cpp scales each pair by alpha / rank; alpha is written equal to the rank,
so the scale is 1 and the deltas are the folded ones. For llama-style models the rows of the q/k
``lora_b`` are permuted like the base's q/k weights (nova.export.gguf_export.permute_qk).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from nova import __version__
from nova.errors import NovaError
from nova.export.gguf_export import gguf_tensor_name, permute_qk
from nova.lazy import require

LORA_OUTTYPES = ("f16", "f32")


def lora_tensors(combined: Any, config: Any, spec: Any) -> list[tuple[str, Any]]:
    """(GGUF name, float32 array) of every lora_a / lora_b, permuted where the base's q/k are."""
    gguf = require("gguf")
    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == spec.gguf_arch)
    name_map = gguf.get_tensor_name_map(arch_enum, config.num_hidden_layers)
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    out: list[tuple[str, Any]] = []
    for key, tensor in combined.tensors.items():
        if ".lora_B." in key:
            continue
        module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        name = gguf_tensor_name(module + ".weight", name_map)
        if name is None:
            raise NovaError(f"GGUF LoRA export: no llama.cpp name for module '{module}'",
                            hint="export a merged model instead (nova merge, then nova export --model)")
        a = tensor.numpy()
        b = combined.tensors[key.replace(".lora_A.", ".lora_B.")].numpy()
        if spec.permute_qk and re.search(r"\.attn_q\.weight$", name):
            b = permute_qk(b, n_head, n_head)
        elif spec.permute_qk and re.search(r"\.attn_k\.weight$", name):
            b = permute_qk(b, n_head, n_kv)
        out += [(f"{name}.lora_a", a), (f"{name}.lora_b", b)]
    return out


def write_lora_gguf(path: Path, combined: Any, config: Any, spec: Any, outtype: str, name: str) -> int:
    """Write the adapter file; returns the number of tensors."""
    gguf = require("gguf")
    np = require("numpy")
    writer = gguf.GGUFWriter(str(path), spec.gguf_arch)
    try:
        writer.add_type("adapter")
        writer.add_string("adapter.type", "lora")
        writer.add_float32("adapter.lora.alpha", float(combined.rank))
        writer.add_name(name)
        writer.add_string("general.source.nova_version", __version__)
        tensors = lora_tensors(combined, config, spec)
        dtype = np.float16 if outtype == "f16" else np.float32
        for tensor_name, array in tensors:
            writer.add_tensor(tensor_name, np.ascontiguousarray(array.astype(dtype)))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return len(tensors)

