"""Model: resolve, load and quantize the base; compose LoRA adapters."""
