#!/usr/bin/env bash
# The demo: Doica (SFT on Romanian chats) then Sora (SFT, then DPO) on SmolLM2-135M, then the tuned model
# side by side with the base, merged into a standalone model, exported for llama.cpp and Ollama, and the
# Doica + Sora chain as one standalone PEFT adapter.
set -euo pipefail
cd "$(dirname "$0")/.."
nova=.venv/bin/nova
$nova train --config configs/demo/pipeline.yaml
# Prompts that are not in the training data: the base, Doica's model and Sora's model side by side.
$nova infer --model checkpoints/demo/sora --compare-phases --max-new-tokens 40 \
  --prompt "Tell me who you are, in one sentence." --prompt "Cine esti tu, de fapt?" \
  --prompt "Care este capitala Romaniei?"
$nova merge --run checkpoints/demo/sora --force
$nova export --model checkpoints/demo/sora-merged --format gguf --out checkpoints/demo/sora-f16.gguf --force
$nova export --model checkpoints/demo/sora-merged --format ollama --out checkpoints/demo/sora-ollama --force
$nova export --run checkpoints/demo/sora --format peft --out checkpoints/demo/sora-standalone --force
$nova status checkpoints/demo
