"""Phases that build, not overwrite: replay of earlier phases' data, and the forgetting measured.

Each phase of a chain trains its own adapter on top of the earlier ones, frozen. That keeps the
earlier adapters' weights, not what the composition does: a new adapter can still move the
model away from what an earlier phase taught. So after the last stage nova scores, on the new
composition, the holdout of every earlier phase of the chain (rebuilt from that phase's recorded
config, with its own system prompt and template, a cache hit when it trained here) and the
user's ``monitor.retention_sets``, writes retention.json (nova.runs.retention) and alerts when an
earlier phase's loss rose more than ``monitor.forgetting_alert``.

``retention.replay`` mixes that share of the chain's SFT training data, encoded as it was
trained, into every SFT stage of the phase (seeded, counted in the data report).
``retention.kl_weight`` adds a KL term toward the phase's start composition on the replayed
sequences (nova.train.methods.loss; the start is the same model with this phase's adapter switched off,
as DPO's reference is, so there is no second model copy).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

from nova.config.data_schema import DataConfig
from nova.errors import NovaError
from nova.runs.record import read_run
from nova.runs.retention import RETENTION_SET_PREFIX, forgetting_table, write_retention
from nova.train.context import PhaseRun
from nova.train.machinery import distributed

REPLAY_COLUMN = "replay"  # 1 on replayed sequences: the KL term's mask


def _chain_sft_data(tokenizer: Any, run: Any) -> list[Any]:
    """The prepared SFT data (the stages that learn their data's tokens) of one earlier phase, from its
    recorded config."""
    from nova.data import prepare_stage_data

    record = read_run(run.path)
    return [prepare_stage_data(stage.data, tokenizer, method=stage.method, seed=stage.training.seed)
            for stage in record.phase.stages if stage.spec.trains_sequences]


def _concat(parts: list[Any]) -> Any:
    parts = [p for p in parts if p is not None and len(p) > 0]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    import datasets

    return datasets.concatenate_datasets([p.select_columns(["input_ids", "labels"]) for p in parts])


def _replay_sample(pool: list[tuple[str, Any]], count: int, seed: int) -> tuple[list[tuple[str, Any]], dict[str, int]]:
    """``count`` sequences drawn evenly from the pooled earlier data (all of it repeated when it has
    fewer), seeded; (per-phase selections, counts per phase)."""
    flat = [(name, i) for name, data in pool for i in range(len(data))]
    rng = random.Random(seed)
    copies, rest = divmod(count, len(flat))
    chosen = flat * copies + rng.sample(flat, rest)
    counts: dict[str, int] = {}
    for name, _ in chosen:
        counts[name] = counts.get(name, 0) + 1
    picks = []
    for name, data in pool:
        rows = sorted(i for n, i in chosen if n == name)
        if rows:
            picks.append((name, data.select(rows)))
    return picks, counts


def add_replay(ctx: PhaseRun, tokenizer: Any, datasets: list[Any]) -> list[Any]:
    """Every SFT stage's training data with ``retention.replay`` of the chain's SFT data mixed in."""
    cfg = ctx.phase.retention
    if cfg.replay <= 0 and cfg.kl_weight <= 0:
        return datasets
    if not ctx.planned.earlier:
        raise NovaError(f"phase '{ctx.phase.name}' sets retention.replay, but it starts from no earlier phase",
                        hint="set start_from, or remove the retention section")
    pool = []
    for name, run in ctx.planned.earlier:
        for data in _chain_sft_data(tokenizer, run):
            pool.append((name, data.train))
    if not pool:
        raise NovaError(f"retention.replay: the earlier phases of '{ctx.phase.name}' have no SFT data to replay",
                        hint="replay mixes earlier SFT data in; remove it for a chain of DPO phases")
    out = []
    for stage, data in zip(ctx.planned.stages, datasets, strict=True):
        if not stage.config.spec.trains_sequences:
            out.append(data)
            continue
        out.append(_with_replay(data, pool, cfg.replay, stage.config.training.seed, cfg.kl_weight > 0))
    return out


def _with_replay(data: Any, pool: list[tuple[str, Any]], share: float, seed: int, flag: bool) -> Any:
    import datasets as hf

    own = len(data.train)
    count = max(1, round(own * share / (1 - share))) if share > 0 else 0
    parts, counts = _replay_sample(pool, count, seed) if count else ([], {})
    columns = ["input_ids", "labels"]
    pieces = [data.train.select_columns(columns)] + [p.select_columns(columns) for _, p in parts]
    if flag:
        pieces = [pieces[0].add_column(REPLAY_COLUMN, [0] * len(pieces[0]))] + [
            p.add_column(REPLAY_COLUMN, [1] * len(p)) for p in pieces[1:]]
    pieces = [pieces[0]] + [p.cast(pieces[0].features) for p in pieces[1:]]
    train = hf.concatenate_datasets(pieces) if len(pieces) > 1 else pieces[0]
    report = replace(data.report)
    report.replayed = counts
    report.replay_share = share
    return replace(data, train=train, report=report)


@dataclass
class Retention:
    """The holdout sets of a phase and what they measured; made before the model loads."""

    sets: dict[str, Any] = field(default_factory=dict)  # name -> tokenized holdout (input_ids, labels)
    retention_sets: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    start: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def prepare(cls, ctx: PhaseRun, tokenizer: Any, datasets: list[Any]) -> Retention:
        """This phase's holdout, each earlier phase's, and the configured retention sets, tokenized."""
        out = cls()
        own = _concat([d.eval for s, d in zip(ctx.planned.stages, datasets, strict=True)
                       if s.config.spec.trains_sequences])
        if own is not None:
            out.sets[ctx.phase.name] = own
        for name, run in ctx.planned.earlier:
            try:
                held = _concat([d.eval for d in _chain_sft_data(tokenizer, run)])
            except NovaError as exc:
                out.notes.append(f"holdout of earlier phase '{name}' not rebuilt: {exc.message}")
                continue
            if held is None:
                out.notes.append(f"earlier phase '{name}' has no SFT holdout (eval_split 0 or DPO only)")
            else:
                out.sets[name] = held
        out._add_retention_sets(ctx, tokenizer)
        return out

    def _add_retention_sets(self, ctx: PhaseRun, tokenizer: Any) -> None:
        from nova.data import prepare_stage_data

        specs = ctx.phase.monitor.retention_sets
        if not specs:
            return
        sft = [s.config for s in ctx.planned.stages if s.config.spec.trains_sequences] or [ctx.planned.stages[0].config]
        for spec in specs:
            cfg = DataConfig(datasets=[spec], eval_split=0, max_length=sft[0].data.max_length,
                             cache_dir=sft[0].data.cache_dir)
            name = f"{RETENTION_SET_PREFIX}{spec.path}"
            self.sets[name] = prepare_stage_data(cfg, tokenizer, method="sft", seed=sft[0].training.seed).train
            self.retention_sets.append(name)

    def measure_start(self, model: Any, tokenizer: Any, ctx: PhaseRun) -> None:
        """The retention sets on the start composition (this phase's adapter off), before training."""
        from nova.model.adapters import active_adapters

        if not self.retention_sets:
            return
        with active_adapters(model, [r.name for r in ctx.chain]):
            self.start = _score(model, tokenizer, {k: self.sets[k] for k in self.retention_sets},
                                f"[{ctx.phase.name}] forgetting: scoring the retention sets before training")

    def finish(self, model: Any, tokenizer: Any, ctx: PhaseRun) -> dict[str, Any]:
        """Score every set on the final composition; rank 0 writes retention.json and alerts."""
        after = _score(model, tokenizer, self.sets, f"[{ctx.phase.name}] forgetting: scoring {len(self.sets)} "
                       f"holdout(s) on the new model ({', '.join(self.sets)})")
        table = forgetting_table(after, self.start, ctx.planned.earlier)
        distributed.on_main(ctx.ranks, lambda: self._record(ctx, after, table))
        return table

    def _record(self, ctx: PhaseRun, after: dict[str, Any], table: dict[str, Any]) -> None:
        from nova.monitor.alerts import forgetting_alerts

        write_retention(ctx.run, ctx.phase.name, after, self.start, table, self.notes)
        for note in self.notes:
            ctx.log.say(f"[{ctx.phase.name}] forgetting: {note}")
        for name, row in table.items():
            ctx.log.say(f"[{ctx.phase.name}] forgetting: {name} holdout loss {row['eval_loss_before']:.4f} -> "
                        f"{row['eval_loss_after']:.4f} ({row['change']:+.1%})")
        forgetting_alerts(ctx.run.alerts, ctx.log, ctx.phase.name, table, ctx.phase.monitor.forgetting_alert)
        if table:
            _redraw(ctx)


def _redraw(ctx: PhaseRun) -> None:
    """The plot gets its forgetting panel now that the table exists; a plot failure never fails a run."""
    from nova.monitor.plot import plot_run

    try:
        plot_run(ctx.run_dir)
    except Exception as exc:  # matplotlib problems are said, not raised: the run itself is done
        ctx.log.say(f"[{ctx.phase.name}] monitor: cannot redraw the plot: {exc}")


def _score(model: Any, tokenizer: Any, sets: dict[str, Any], line: str) -> dict[str, Any]:
    from nova.console import task
    from nova.model.evaluate import holdout_loss

    out = {}
    if not sets:
        return out
    with task("scoring holdouts", len(sets), line=line) as doing:
        for name, data in sets.items():
            result = holdout_loss(model, data, tokenizer.pad_token_id)
            if result is not None:
                out[name] = result.to_dict()
            doing.advance()
    return out
