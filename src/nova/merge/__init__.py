"""Merge a run's adapter chain into its base: one standalone Hugging Face model directory.

What goes out: safetensors weights, config.json, tokenizer files with the chat template, and a
generation_config.json whose eos ids include the chat template's end-of-turn token (so plain
``generate`` stops at the end of an answer), plus ``nova_merge.json`` (where it came from and
the parity figures). No optimizer state, checkpoints or adapters: the default output is
``<RUN_DIR>-merged`` BESIDE the run directory, so shipping it never ships checkpoints.

How: the base is loaded in full precision (fp32 for the computation, never 4-bit), every
phase's adapter of the chain (earlier phases from ``config.yaml`` ``_chain``, then the run's
own ``adapter/``) is stacked and activated exactly as in training (nova.model.adapters), and
PEFT's ``merge_and_unload`` adds every delta ``scale_i * B_i @ A_i`` into the weights. Only
then are the weights cast to the output dtype (``auto`` = the dtype in the base's config.json).

Which full-precision weights (``--from``), for a run trained on a quantized (nf4/fp4/int8) base:
- ``original``: the base's own weights. Keeps the base's precision and is what other tools
  (``peft merge_and_unload`` on an unquantized base) produce, but the adapters were trained
  against the QUANTIZED weights, so the result is a model that was never trained or evaluated.
- ``dequantized`` (the default): the quantized weights the adapters were trained against,
  dequantized back (taken from the same bitsandbytes quantization the trainer used). The merge
  then reproduces the trained and evaluated model, up to float rounding.
Measured (max abs logit difference to the trained composition, nf4 + double quant, fp32):

                      SmolLM2-135M-Instruct           tiny test llama
                      (2 phases, 30 + 20 steps,       (2 phases, 6 + 8 steps)
                      16 held-out chats, 3963 tok)
  --from dequantized  max 1.7e-4, mean 8.6e-6,        max 4.8e-7
                      top-1 token agreement 100%
  --from original     max 22.3, mean 1.77,            max 0.12
                      top-1 token agreement 70.5%

So ``original`` ships a different model from the one trained: 30% of next-token argmaxes
change. Its held-out NLL was lower on SmolLM2 (3.085 vs 3.284 nats) because nf4 costs this very
small model a lot (base 3.210 -> 3.627 nats), but most of what the adapters learned does not
carry over (they lowered NLL by 0.344 on the quantized base, by 0.125 on the original one): the
adapters partly compensate for the quantization error. The default keeps what was evaluated
(eval losses, smoke answers, DPO margins); pass ``--from original`` to trade that for the base's
precision, and evaluate the merged model again. Full figures: docs/merge.md.
With ``quantization: none`` both are the same weights.

Checks: after the merge, the merged model's logits (fp32) must match the unmerged composition
(the same full-precision base + adapters, fp32) within ``tolerance`` on a few held-out prompts,
else nothing is written; the saved directory is reloaded with plain transformers and must give
the logits of the merged weights in the output dtype. The distance to the quantized trained
composition and the cost of the output dtype are reported, not enforced.

Safety: bad inputs (no adapter, an adapter for another base, an existing output without
``force``, too little disk) fail before anything is written; the output is written to a
temporary sibling directory and renamed into place at the end, and removed on any failure.

The package, in the order a merge runs (``merge_run`` below calls them): ``inputs`` (the request,
the run read through ``nova.runs``, every check that needs no weights), ``weights`` (the trained
composition, dequantization, the fp32 merge), ``parity`` (encoding, logits, the reload check) and
``write`` (generation config, the atomic write, ``nova_merge.json``); ``run.merge_run`` calls them
in that order. This package module holds only the defaults, so ``nova --help`` reads them at once.
"""

from __future__ import annotations

SOURCES = ("dequantized", "original")
DEFAULT_SOURCE = "dequantized"
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# Merged vs unmerged, both fp32, max abs logit: measured 2.2e-4 on SmolLM2-135M and 4.8e-7 on the tiny
# model (summation order only). 1e-2 leaves room for larger models' bigger activations, and is still
# ~2000x below what a wrong merge shows (the SmolLM2 run without its adapters: 20 logits away).
DEFAULT_TOLERANCE = 1e-2
