"""A task's score on one model: items rendered with the chat template as at inference, scored in batches.

Every item is a conversation: the item's own ``system`` or else the run's system prompt, then the
prompt as the user's turn. A reply (a choice, a chosen or rejected answer) is written as the
assistant's final turn the way training writes it (``nova.data.turns.reply_texts``, the template's
end-of-turn included), so a choice is scored on the very tokens the model would produce. A model
without a chat template gets the plain text.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from nova.errors import NovaError
from nova.eval.items import Item, is_right
from nova.eval.tasks import Task


class Prompter:
    """Renders items into token ids with the run's tokenizer, chat template and system prompt."""

    def __init__(self, tokenizer: Any, system: str | None, name: str = "model") -> None:
        from nova.data.template import ChatTemplate

        self.tokenizer = tokenizer
        self.system = system
        self.template = ChatTemplate(tokenizer, name) if getattr(tokenizer, "chat_template", None) else None

    def _messages(self, item: Item) -> list[dict[str, str]]:
        system = item.system if item.system is not None else self.system
        head = [{"role": "system", "content": system}] if system else []
        return [*head, {"role": "user", "content": item.prompt}]

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def prompt_ids(self, item: Item) -> list[int]:
        """The generation prompt of an item (what the model answers from)."""
        if self.template is None:
            return self._plain_context(item)
        return self.encode(self.template.render(self.template.template_messages(self._messages(item)),
                                                generation=True))

    def _plain_context(self, item: Item) -> list[int]:
        system = item.system if item.system is not None else self.system
        text = (f"{system}\n\n" if system else "") + item.prompt + "\n"
        ids = self.encode(text)
        bos = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id
        return [bos, *ids] if bos is not None else ids

    def reply(self, item: Item, text: str) -> tuple[list[int], list[int]]:
        """(context ids, reply ids) of ``text`` as the assistant's reply to the item."""
        if self.template is None:
            eos = self.tokenizer.eos_token_id
            return self._plain_context(item), self.encode(text) + ([eos] if eos is not None else [])
        from nova.data.records import RecordProblem
        from nova.data.turns import reply_texts

        try:
            prompt, reply = reply_texts(self.template, self._messages(item), {"role": "assistant", "content": text})
        except RecordProblem as exc:
            raise NovaError(f"cannot write an eval item as a chat: {exc.message}", hint=exc.hint) from None
        return self.encode(prompt), self.encode(reply)


def score(task: Task, backend: Any, prompter: Prompter) -> float | None:
    """The task's score on the model ``backend`` runs (None when nothing could be scored)."""
    if task.kind == "holdout":
        return backend.holdout(task.data)
    if task.kind == "pairs":
        rows = list(task.data)
        requests = [(list(r["prompt_ids"]), list(r[k])) for r in rows for k in ("chosen_ids", "rejected_ids")]
        return _pair_accuracy(backend.loglik(requests))
    if task.kind == "preference":
        requests = [prompter.reply(i, text) for i in task.items for text in (i.chosen, i.rejected) if text]
        return _pair_accuracy(backend.loglik(requests))
    if task.kind == "choice":
        return _choice_accuracy(task.items, backend, prompter)
    if task.kind == "generate":
        return _generated_accuracy(task.items, backend, prompter)
    if task.kind == "lm":
        from nova.eval.lmeval import run_lm_task

        return run_lm_task(task, backend, prompter.tokenizer)
    raise ValueError(f"unknown task kind {task.kind}")


def _pair_accuracy(scored: list[tuple[float, bool]]) -> float | None:
    """Share of pairs (chosen, rejected: consecutive) whose chosen reply is the more likely."""
    pairs = [(scored[i][0], scored[i + 1][0]) for i in range(0, len(scored) - 1, 2)]
    return sum(1 for c, r in pairs if c > r) / len(pairs) if pairs else None


def _choice_accuracy(items: list[Item], backend: Any, prompter: Prompter) -> float | None:
    """Multiple choice: each choice's log-likelihood per character (acc_norm); right when the gold one is highest."""
    requests, owners = [], []
    for n, item in enumerate(items):
        for choice in item.choices:
            requests.append(prompter.reply(item, choice))
            owners.append((n, max(1, len(choice))))
    scored = backend.loglik(requests)
    best: dict[int, tuple[float, int]] = {}
    counters: dict[int, int] = defaultdict(int)
    for (n, length), (logprob, _) in zip(owners, scored, strict=True):
        k = counters[n]
        counters[n] += 1
        value = logprob / length
        if n not in best or value > best[n][0]:
            best[n] = (value, k)
    return sum(1 for n, item in enumerate(items) if best[n][1] == item.gold) / len(items) if items else None


def _generated_accuracy(items: list[Item], backend: Any, prompter: Prompter) -> float | None:
    """Greedy replies (batched per reply length), judged by each item's match rule."""
    from nova.model.generate import opens_think, split_reply

    groups: dict[int, list[int]] = defaultdict(list)
    for n, item in enumerate(items):
        groups[item.max_new_tokens].append(n)
    right = 0
    for max_new, members in groups.items():
        prompts = [prompter.prompt_ids(items[n]) for n in members]
        for n, prompt, new in zip(members, prompts, backend.generate(prompts, max_new), strict=True):
            text = prompter.tokenizer.decode(new, skip_special_tokens=True)
            opened = opens_think(prompter.tokenizer.decode(prompt, skip_special_tokens=False))
            right += is_right(items[n], split_reply(text, opened).answer or text)
    return right / len(items) if items else None
