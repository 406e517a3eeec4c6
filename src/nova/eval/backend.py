"""What scoring asks of a model, on the two engines nova evaluates with: log-likelihoods and greedy replies.

``HFBackend`` is the model as nova loads it (a run's base with its adapters stacked as trained,
switched per phase by ``nova.model.adapters.active_adapters``; a merged model directory); it
batches: log-likelihood rows are sorted by length and packed up to ``BATCH_TOKENS`` padded
tokens per forward, with the LM head applied only where a continuation token is scored;
generation runs ``GENERATE_BATCH`` left-padded prompts at a time. ``LlamaBackend`` is a GGUF file
in llama.cpp (``nova.export.llama_cpp``), one sequence at a time. Both take token ids from the
run's tokenizer, so an export is scored on exactly the tokens its model was.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nova.errors import NovaError
from nova.lazy import require

BATCH_TOKENS = 8192  # padded tokens per log-likelihood forward: bounded memory whatever the task
GENERATE_BATCH = 16  # prompts per generate call
IGNORE = -100

Request = tuple[list[int], list[int]]  # (context ids, continuation ids)


def _batches(order: list[int], widths: Sequence[int], budget: int, most: int | None = None) -> list[list[int]]:
    """``order`` (longest first) cut into batches whose padded size stays within ``budget``."""
    out: list[list[int]] = []
    for i in order:
        if out and widths[out[-1][0]] * (len(out[-1]) + 1) <= budget and (most is None or len(out[-1]) < most):
            out[-1].append(i)
        else:
            out.append([i])
    return out


class HFBackend:
    """A transformers model (with or without PEFT adapters) and its tokenizer."""

    engine = "transformers"

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        from nova.model.head import head_settings

        self.causal_lm = causal_lm
        self.scale, self.softcap = head_settings(causal_lm)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        import inspect

        # transformers 5.2x names the KV cache argument ``cache``; earlier 5.x ``past_key_values``.
        params = inspect.signature(causal_lm.base_model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def loglik(self, requests: Sequence[Request]) -> list[tuple[float, bool]]:
        """(summed log-probability of each continuation after its context, whether it is the greedy one).

        Continuations of one context (a question's choices, a pair's two replies) share its forward: the
        context runs once, its KV cache is repeated for each continuation, and only the continuations run
        again, so a multiple-choice item costs its prompt once instead of once per choice."""
        torch = require("torch")
        contexts: dict[tuple[int, ...], list[int]] = {}
        for n, (ctx, _) in enumerate(requests):
            if not ctx:
                raise ValueError("a scored continuation needs a context of at least one token")
            contexts.setdefault(tuple(ctx), []).append(n)
        keys = sorted(contexts, key=lambda c: -(len(c) + max(len(requests[n][1]) for n in contexts[c])))
        widths = [len(c) + max(len(requests[n][1]) for n in contexts[c]) for c in keys]
        cost = [w * len(contexts[c]) for w, c in zip(widths, keys, strict=True)]
        out: list[tuple[float, bool]] = [(0.0, True)] * len(requests)
        with torch.no_grad():
            for batch in _batches(list(range(len(keys))), cost, BATCH_TOKENS):
                group = [(list(keys[i]), [(n, requests[n][1]) for n in contexts[keys[i]]]) for i in batch]
                for n, result in self._shared_prefix(group):
                    out[n] = result
        return out

    def _shared_prefix(self, group: list[tuple[list[int], list[tuple[int, list[int]]]]]) -> list[
            tuple[int, tuple[float, bool]]]:
        """Score the continuations of a batch of contexts: contexts left-padded and run with a cache, the
        cache repeated per continuation, continuations right-padded and run on top of it."""
        torch = require("torch")
        dev = self.device
        width = max(len(c) for c, _ in group)
        ids = torch.tensor([[self.pad] * (width - len(c)) + c for c, _ in group], device=dev)
        mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c, _ in group], device=dev)
        first = self.causal_lm.base_model(input_ids=ids, attention_mask=mask,
                                          position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True)
        conts = [(row, n, cont) for row, (_, items) in enumerate(group) for n, cont in items]
        rows = torch.tensor([row for row, _, _ in conts], device=dev)
        cache = getattr(first, "cache", None) or first.past_key_values
        cache.batch_select_indices(rows)
        cwidth = max(1, max(len(c) for _, _, c in conts))
        cont_ids = torch.tensor([c + [self.pad] * (cwidth - len(c)) for _, _, c in conts], device=dev)
        cont_mask = torch.tensor([[1] * len(c) + [0] * (cwidth - len(c)) for _, _, c in conts], device=dev)
        lengths = torch.tensor([len(group[row][0]) for row, _, _ in conts], device=dev)
        second = self.causal_lm.base_model(
            input_ids=cont_ids, attention_mask=torch.cat([mask[rows], cont_mask], dim=1),
            position_ids=lengths[:, None] + torch.arange(cwidth, device=dev)[None, :], use_cache=True,
            **{self._cache_arg: cache}).last_hidden_state
        last = first.last_hidden_state[:, -1]
        # The first continuation token is predicted at the context's last position, token j at j - 1.
        hidden = torch.cat([torch.cat([last[row][None], second[r, : len(c) - 1]]) for r, (row, _, c) in
                            enumerate(conts) if c])
        targets = [t for _, _, c in conts for t in c]
        owner = [r for r, (_, _, c) in enumerate(conts) for _ in c]
        return [(n, value) for (_, n, _), value in zip(conts, self._sums(hidden, targets, owner, len(conts)),
                                                          strict=True)]

    def _sums(self, hidden: Any, targets: list[int], owner: list[int], count: int) -> list[tuple[float, bool]]:
        """Per owner: the summed log-probability of its targets, and whether each was the argmax."""
        torch = require("torch")
        from nova.model.head import logits_of

        if not targets:
            return [(0.0, True)] * count
        head = self.causal_lm.get_output_embeddings()
        logprobs = torch.log_softmax(logits_of(hidden.to(head.weight.device), head, self.scale, self.softcap), dim=-1)
        target = torch.tensor(targets, device=logprobs.device)
        which = torch.tensor(owner, device=logprobs.device)
        sums = torch.zeros(count, dtype=torch.float64, device=logprobs.device)
        sums.index_add_(0, which, logprobs.gather(1, target[:, None])[:, 0].double())
        misses = torch.zeros(count, dtype=torch.long, device=logprobs.device)
        misses.index_add_(0, which, (logprobs.argmax(dim=-1) != target).long())
        return [(float(s), int(m) == 0) for s, m in zip(sums.tolist(), misses.tolist(), strict=True)]

    def generate(self, prompts: Sequence[list[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy continuations (stopped at the end-of-turn token, which is left out)."""
        torch = require("torch")
        from nova.model.generate import Sampling

        kwargs = Sampling(max_new_tokens=max_new_tokens).generate_kwargs(self.tokenizer)
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        out: list[list[int]] = [[] for _ in prompts]
        stops = self._stops()
        for batch in _batches(order, [len(p) for p in prompts], BATCH_TOKENS, GENERATE_BATCH):
            width = max(len(prompts[i]) for i in batch)
            ids = torch.tensor([[self.pad] * (width - len(prompts[i])) + prompts[i] for i in batch], device=self.device)
            mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in batch],
                                device=self.device)
            with torch.no_grad():
                generated = self.model.generate(input_ids=ids, attention_mask=mask, eos_token_id=sorted(stops),
                                                **kwargs)
            for i, row in zip(batch, generated[:, width:].tolist(), strict=True):
                out[i] = _until_stop(row, stops)
        return out

    def _stops(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        config = getattr(self.causal_lm, "generation_config", None)
        extra = getattr(config, "eos_token_id", None)
        ids.update(extra if isinstance(extra, list) else [extra])
        return {i for i in ids if isinstance(i, int)}

    def holdout(self, dataset: Any) -> float | None:
        """Mean loss per trained token of a tokenized holdout (input_ids, labels): nova.model.evaluate."""
        from nova.model.evaluate import holdout_loss

        scored = holdout_loss(self.model, dataset, self.pad)
        return None if scored is None else scored.eval_loss


def _until_stop(row: list[int], stops: set[int]) -> list[int]:
    for j, token in enumerate(row):
        if token in stops:
            return row[:j]
    return row


class LlamaBackend:
    """A GGUF model in llama.cpp, fed the run tokenizer's token ids."""

    engine = "llama.cpp"

    def __init__(self, path: Path, vocab_size: int, n_ctx: int = 4096) -> None:
        from nova.export import llama_cpp

        self.llama = llama_cpp.load(path, n_ctx=n_ctx, threads=max(1, os.cpu_count() or 1))
        lib = llama_cpp.library()
        n_vocab = lib.llama_vocab_n_tokens(self.llama.vocab)
        if n_vocab < vocab_size:
            self.close()
            raise NovaError(f"{path} has a vocabulary of {n_vocab} tokens, the run's tokenizer {vocab_size}",
                            hint="score a GGUF made from this run's model (nova export), or evaluate it on its own")

    def _logprobs(self, ids: list[int]) -> Any:
        """log-softmax of every position's logits (float64), for ``ids`` cut to the context."""
        np = require("numpy")
        if len(ids) > self.llama.n_ctx:
            raise NovaError(f"a scored sequence of {len(ids)} tokens does not fit llama.cpp's context of "
                            f"{self.llama.n_ctx}", hint="use shorter items")
        logits = self.llama.logits(ids).astype(np.float64)
        top = logits.max(axis=-1, keepdims=True)
        return logits - (top + np.log(np.exp(logits - top).sum(axis=-1, keepdims=True)))

    def loglik(self, requests: Sequence[Request]) -> list[tuple[float, bool]]:
        out = []
        for ctx, cont in requests:
            logprobs = self._logprobs(ctx + cont)
            positions = [len(ctx) + j - 1 for j in range(len(cont))]
            picked = [float(logprobs[p, t]) for p, t in zip(positions, cont, strict=True)]
            greedy = all(int(logprobs[p].argmax()) == t for p, t in zip(positions, cont, strict=True))
            out.append((sum(picked), greedy))
        return out

    def generate(self, prompts: Sequence[list[int]], max_new_tokens: int) -> list[list[int]]:
        out = []
        for ids in prompts:
            tokens = self.llama.greedy(ids, min(max_new_tokens, self.llama.n_ctx - len(ids)))
            out.append([t for t in tokens if not self.llama.is_end_of_generation(t)])
        return out

    def holdout(self, dataset: Any) -> float | None:
        total, count = 0.0, 0
        for row in dataset:
            ids, labels = list(row["input_ids"]), list(row["labels"])
            logprobs = self._logprobs(ids)
            for j in range(1, len(ids)):
                if labels[j] != IGNORE:
                    total -= float(logprobs[j - 1, labels[j]])
                    count += 1
        return total / count if count else None

    def close(self) -> None:
        self.llama.close()
