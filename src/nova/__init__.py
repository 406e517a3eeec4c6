"""nova: config-driven QLoRA fine-tuning.

The package follows the path the data takes: ``config`` -> ``preflight`` -> ``data`` ->
``model`` -> ``train`` -> ``merge`` / ``infer`` / ``export``, with a thin ``cli`` on top.
Nothing here imports torch at import time, so ``nova --help`` stays fast.
"""

__version__ = "0.1.0"
