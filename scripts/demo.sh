#!/usr/bin/env bash
# The demo: Doica (SFT on Romanian chats) then Sora (SFT, then DPO) on SmolLM2-135M, then the tuned model
# side by side with the base, merged into a standalone model, and exported for llama.cpp and Ollama.
set -euo pipefail
cd "$(dirname "$0")/.."
nova=.venv/bin/nova
$nova train --config configs/demo/pipeline.yaml
$nova infer --model checkpoints/demo/sora --compare --max-new-tokens 40 \
  --prompt "Who are you?" --prompt "Care este capitala Romaniei?"
$nova merge --run checkpoints/demo/sora --force
$nova export --model checkpoints/demo/sora-merged --format gguf --out checkpoints/demo/sora-f16.gguf --force
$nova export --model checkpoints/demo/sora-merged --format ollama --out checkpoints/demo/sora-ollama --force
$nova status checkpoints/demo
