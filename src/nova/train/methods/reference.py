"""How a trainer scores its reference, the stage's starting point (DPO, KTO; GRPO has its own pass).

TRL (1.16) takes the reference of a PEFT policy by disabling *all* adapters (or switching to one
adapter named "ref"). With stacked phases that is the raw base, which is the bug LLaMA-Factory has
(their issue #8459): DPO would pull the model back to its pre-SFT self. nova scores it with exactly
the reference composition active (earlier phases plus a frozen copy of this phase's adapter as it
was when the stage began: ``StageReference``, nova.model.trained), so no second model copy is held.

With adapters it is scored live, on the very micro batch the policy scores, not precomputed over
the dataset in other batches: in bf16 a kernel's rounding depends on the batch shape (padding,
rows, AMX/oneDNN and cuBLAS tile choices), and a reference scored in other batches differed from
the policy by a margin of 0.008 before any update (measured on an AMX CPU), as large as what a
short run on real preference pairs learns. On the same batch the policy at step 0 equals its
reference exactly. It costs one forward without gradients per micro batch, the work the
precomputation did once per example. Full fine-tuning keeps the precomputation: its reference
weights are gone once training starts.
"""

from __future__ import annotations

from typing import Any


def score_trained_positions_only() -> None:
    """Make TRL's fused LM head (DPO, reference log-probs) project only positions that carry loss.

    TRL 1.x gathers the trained positions on Triton GPUs but scores every position elsewhere (CPU
    included) so that compilers for other accelerators see static tile shapes; nova never compiles
    there, so it gathers everywhere: the same log-probs (zeros elsewhere), without the LM head on
    prompt tokens. Only the gather decision is changed; the kernel choice inside TRL is untouched.
    """
    import trl.trainer.utils as trl_utils

    if hasattr(trl_utils, "_use_triton"):
        trl_utils._use_triton = lambda device: True


def live_reference_logps(trainer: Any, live: bool) -> None:
    """Score the reference on each micro batch as the policy is scored (DPO, KTO with adapters).

    The trainer was built without TRL's precomputation; TRL's flag is then set so that its loss reads
    the reference log-probs from the batch, where nova's ``_compute_loss`` puts them just before.
    """
    trainer.live_reference = live
    if live:
        trainer.precompute_ref_logps = True


TRL_REFERENCE_COPY = "ref"  # the adapter copy TRL adds when handed a PEFT model without a ref_model


def drop_reference_copy(model: Any) -> None:
    """Remove the "ref" adapter TRL copies from the trained one: nova never reads it (its reference is
    its own composition, ORPO and SimPO have none), so it would only cost memory and checkpoint space."""
    from nova.model.adapters import TRAINABLE, activate

    peft_config = getattr(model, "peft_config", {})
    if TRL_REFERENCE_COPY not in peft_config:
        return
    active = [n for n in model.base_model.active_adapters if n != TRL_REFERENCE_COPY]
    model.delete_adapter(TRL_REFERENCE_COPY)
    activate(model, active, trainable=[TRAINABLE])
