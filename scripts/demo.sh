#!/usr/bin/env bash
# The demo: Doica (SFT on Romanian chats) then Sora (SFT, then DPO) on SmolLM2-135M, then a smoke test.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/nova train --config configs/demo/pipeline.yaml
.venv/bin/nova infer --model checkpoints/demo/sora --prompt "Care este capitala Romaniei?" --max-new-tokens 48
