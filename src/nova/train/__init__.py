"""Train: run phases and their stages (SFT, DPO) with TRL, writing checkpoints, metrics and adapters."""
