"""What every stage and method shares: checkpoints, signals, NaN and OOM handling, callbacks, batching, ranks."""
