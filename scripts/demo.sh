#!/usr/bin/env bash
# The demo: Doica (SFT on Romanian chats) then Sora (SFT, then DPO) on SmolLM2-135M, then the tuned model
# side by side with the base, merged into a standalone model, exported for llama.cpp and Ollama, and the
# Doica + Sora chain as one standalone PEFT adapter. The steps are `nova demo`'s (src/nova/cli/demo_cmd.py),
# which runs the same on Windows and macOS; `nova demo --dry-run` lists them.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/nova demo
