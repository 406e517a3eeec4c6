"""Training, laid out as the run, the methods, and the machinery they share.

The run (this folder): ``pipeline.py`` runs each phase of a config in order (``run_config``);
``phase.py`` runs one phase in order, lock, inputs, data, batch, first writes, model, stages,
finish (``run_phase``); ``stage.py`` runs one stage: skip, resume, OOM retry, save (``run_stage``);
``context.py`` holds the frozen values they pass down; ``fingerprint.py`` decides whether earlier
work may be reused; ``retention.py`` replays earlier phases' data and measures forgetting;
``dryrun.py`` and ``launch.py`` are ``nova train --dry-run`` and the torchrun launcher (``torchrun.py``: torch's
launcher without its own failure report).

A method (``methods/``): one trainer module per training method (``sft.py``, ``dpo.py``, ``kto.py``,
``pairwise.py`` for ORPO and SimPO, ``grpo.py`` with ``rewards.py``), each with one entry,
``build_<method>_trainer(TrainerInputs)``, which its spec in ``nova.methods`` names; ``common.py``
the arguments and callbacks they share, ``reference.py`` how a reference is scored, ``loss.py``
nova's SFT loss.

Shared machinery (``machinery/``): sealed checkpoints, signals, NaN stops and OOM helpers
(``resilience.py``), metrics and progress callbacks (``callbacks.py``), SFT batching and packing
(``batching.py``), the distributed engine (``strategy.py``) and ranks (``distributed.py``).

What a phase trains, an adapter or every weight, is ``nova.model.trained``: nothing here asks.
"""
