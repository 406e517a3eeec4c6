"""Task scores of the base, every phase of a run and its exports (``nova eval``), and pipeline gates.

``items`` reads task files, ``tasks`` resolves task names, ``score`` scores a task on a model,
``backend`` runs the models (transformers with the run's adapters, llama.cpp for GGUF),
``lmeval`` bridges lm-evaluation-harness, ``models`` resolves which models, ``run`` puts it
together and stores eval.json (nova.runs.eval_results), ``gates`` stops a pipeline. See docs/eval.md.
"""
