"""lm-evaluation-harness tasks on nova's models, offline, through the same backends as nova's own tasks.

``lm:NAME`` is a task shipped with nova (src/nova/resources/eval/NAME.yaml) or one of lm-eval's
own; ``lm:FILE.yaml`` a task config of your own. In a YAML file, ``dataset_kwargs.data_files``
paths are relative to the file, so a task and its data travel together and nothing is downloaded
(lm-eval's own registry tasks need their data sets in the Hugging Face cache: offline, they fail
with lm-eval's message).

lm-eval sees the model through ``NovaLM``, an ``lm_eval.api.model.LM`` over nova's backend: the
run's composition with adapters active as trained (never merged), or a GGUF in llama.cpp. Its
prompts are lm-eval's, as written in the task (no chat template), so its figures compare with
published lm-eval numbers. The package is the optional extra ``nova-tune[eval]``.
"""

from __future__ import annotations

from typing import Any

from nova.errors import NovaError
from nova.lazy import require

PREFERRED = ("acc_norm", "acc", "exact_match", "f1")


def _lm_class() -> type:
    api = require("lm_eval.api.model")

    class NovaLM(api.LM):  # type: ignore[misc, name-defined]
        """lm-eval's view of a nova backend: text in, log-likelihoods and greedy text out."""

        def __init__(self, backend: Any, tokenizer: Any) -> None:
            super().__init__()
            self.backend, self.tokenizer = backend, tokenizer
            self.prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id

        def _encode(self, text: str) -> list[int]:
            return list(self.tokenizer(text, add_special_tokens=False).input_ids)

        def _pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
            spaces = len(context) - len(context.rstrip())  # as lm-eval's HFLM: trailing spaces join the answer
            if spaces:
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            ctx = self._encode(context) if context else [self.prefix]
            return ctx, self._encode(continuation)

        def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
            return self.backend.loglik([self._pair(*r.args) for r in requests])

        def loglikelihood_rolling(self, requests: list[Any]) -> list[float]:
            scored = self.backend.loglik([([self.prefix], self._encode(r.args[0])) for r in requests])
            return [s for s, _ in scored]

        def generate_until(self, requests: list[Any]) -> list[str]:
            out = []
            for request in requests:
                context, kwargs = request.args
                until = kwargs.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                ids = self.backend.generate([self._encode(context)], int(kwargs.get("max_gen_toks", 256)))[0]
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                for stop in until:
                    text = text.split(stop, 1)[0]
                out.append(text)
            return out

    return NovaLM


def _pick(metrics: dict[str, Any]) -> tuple[str, float] | None:
    """The task's main metric: the first of PREFERRED it reports, else its first number."""
    values = {k.split(",", 1)[0]: v for k, v in metrics.items()
              if isinstance(v, int | float) and not isinstance(v, bool) and "stderr" not in k}
    for name in PREFERRED:
        if name in values:
            return name, float(values[name])
    return next(((k, float(v)) for k, v in values.items()), None)


def run_lm_task(task: Any, backend: Any, tokenizer: Any) -> float | None:
    """Run one lm-eval task on the backend's model; its main metric (acc_norm, acc, exact_match, f1, ...)."""
    require("lm_eval")
    import logging

    from lm_eval import simple_evaluate

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    limit = task.count or None
    try:
        results = simple_evaluate(model=_lm_class()(backend, tokenizer), tasks=[task.lm], limit=limit,
                                  bootstrap_iters=0, log_samples=False, verbosity="ERROR")
    except Exception as exc:  # lm-eval raises many kinds (missing data set, bad config): one line
        raise NovaError(f"lm-eval task {task.name} failed: {type(exc).__name__}: {exc}"[:500],
                        hint="give a task YAML whose dataset_kwargs.data_files point at local files (docs/eval.md)"
                        ) from None
    scores = (results or {}).get("results", {})
    name = task.lm["task"] if isinstance(task.lm, dict) else task.lm
    metrics = scores.get(name) or (next(iter(scores.values())) if scores else {})
    samples = (results or {}).get("n-samples", {}).get(name, {})
    if isinstance(samples, dict) and samples.get("effective"):
        task.count = int(samples["effective"])
    picked = _pick(metrics)
    if picked is None:
        return None
    task.metric = picked[0]
    return picked[1]
