"""One stage's data, start to finish: read, validate, dedup, split, mix, tokenize, cache.

``check_data`` runs the same steps without a model (the token view only when a tokenizer is
given) and never writes the cache; ``prepare_stage_data`` adds tokenization and the cache.
Both raise ``DataError`` for bad records under ``on_error: fail`` and when nothing is left
to train on; neither prints, except that tokenizing a large set is said and counted through
``nova.console.task`` (the run log in training, stderr elsewhere).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from itertools import chain
from typing import Any

from nova.config.data_schema import DataConfig
from nova.data import cache
from nova.data.encode import IGNORE, NO_TRAINED, OK, TOO_LONG, TRUNCATED, ChatTemplate, Encoder
from nova.data.load import Example, LoadContext, load_sources
from nova.data.mix import dedup, holdout, mix, remove_leakage
from nova.data.report import DataReport, TokenStats
from nova.data.skipped import judge_skipped
from nova.data.turns import TurnSettings
from nova.errors import DataError, NovaError, Problem
from nova.methods import Method, method_spec

_HELPERS = ("where", "row", "length", "trained", "masked", "status", "prompt_cut", "completion_cut", "reasoning",
            "per_turn", "empty_think")
# Below this many records, worker processes cost more to start than they save.
_PARALLEL_MIN_RECORDS = 20_000
_PARALLEL_MIN_CPUS = 4
_BATCH = 1000  # datasets.map batches (worker processes)
# Single-process batches: larger ones leave the tokenizer's threads idle less often between
# batches (measured on 2 cores, 50k chats: 2,000 about 0.3 s faster than 1,000).
_ENCODE_BATCH = 2000
_SAY_TOKENIZING = 20_000  # records from which tokenizing takes long enough (seconds) to be said and counted


@dataclass
class PreparedData:
    """Tokenized train (and eval) datasets for one stage, and what was done to get them."""

    train: Any  # datasets.Dataset
    eval: Any  # datasets.Dataset | None
    report: DataReport


# Training records of the data checked in this process, by data settings and method: the dry run checks
# the data, then preflight's schedule check (which does not read the data again) counts what it counted.
_CHECKED: dict[str, int] = {}


def _checked_key(cfg: DataConfig, method: str) -> str:
    return json.dumps([cfg.model_dump(mode="json"), method], sort_keys=True)


def checked_train_records(cfg: DataConfig, method: str) -> int | None:
    """The training records ``check_data`` found for these settings in this process; None if not checked."""
    return _CHECKED.get(_checked_key(cfg, method))


def check_data(cfg: DataConfig, *, method: Method, tokenizer: Any = None, seed: int = 42,
               dpo: Any = None) -> DataReport:
    """Validate a stage's data before any model loads (token view only with a tokenizer)."""
    report, train, evals = _assemble(cfg, method=method, seed=seed, fields=_fields(dpo))
    if tokenizer is None:
        report.token_note = "no tokenizer given"
    else:
        _tokenize_all(cfg, tokenizer, method, dpo, report, train, evals, build=False)
    _CHECKED[_checked_key(cfg, method)] = report.train_records
    return report


def prepare_stage_data(cfg: DataConfig, tokenizer: Any, *, method: Method, seed: int,
                       dpo: Any = None) -> PreparedData:
    """Train/eval datasets ready for the trainer (see the module docstring of nova.data)."""
    key = data_key(cfg, tokenizer, method=method, seed=seed, dpo=dpo)
    if key is not None and (hit := cache.load(cfg.cache_dir, key)) is not None:
        train, evals, saved = hit
        report = DataReport.from_dict(saved)
        report.cache = f"hit ({cfg.cache_dir}/data/{key})"
        return PreparedData(train, evals, report)
    report, train_ex, eval_ex = _assemble(cfg, method=method, seed=seed, fields=_fields(dpo))
    train, evals = _tokenize_all(cfg, tokenizer, method, dpo, report, train_ex, eval_ex, build=True)
    if key is not None:
        report.cache = f"saved ({cfg.cache_dir}/data/{key})"
        cache.save(cfg.cache_dir, key, train, evals, report.to_dict())
    return PreparedData(train, evals, report)


def data_key(cfg: DataConfig, tokenizer: Any, *, method: Method, seed: int, dpo: Any = None) -> str | None:
    """What identifies a stage's prepared data: file contents, data settings, method, seed and
    tokenizer, hashed (None when a source cannot be hashed, e.g. a hub dataset). The cache is keyed
    by it, and a run's fingerprint carries it, so a resume notices changed data."""
    template = _template_source(tokenizer)
    return cache.cache_key(cfg, method=method, seed=seed, dpo_lengths=_dpo_lengths(dpo),
                           tokenizer_id=cache.tokenizer_fingerprint(tokenizer, template), fields=_fields(dpo))


def _dpo_lengths(dpo: Any) -> tuple[int, int]:
    if dpo is None:  # SFT: its data has no prompt/reply limits; the key keeps DPO's defaults (caches stay valid)
        from nova.methods.dpo import DPOConfig

        dpo = DPOConfig()
    return dpo.max_prompt_length, dpo.max_completion_length


def _fields(settings: Any) -> tuple[str, ...]:
    """GRPO: the record fields its rewards read (every record must have them); none for other methods."""
    return tuple(getattr(settings, "reference_fields", ()))


def _template_source(tokenizer: Any) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    return template.get("default") if isinstance(template, dict) else template


def _fail_if_bad(report: DataReport, cfg: DataConfig) -> None:
    if cfg.on_error == "fail" and report.problem_count:
        raise DataError("bad data", report.problems)


def _assemble(cfg: DataConfig, *, method: Method, seed: int,
              fields: tuple[str, ...] = ()) -> tuple[DataReport, list[Example], list[Example]]:
    """Read and validate every source, then dedup, split, remove leakage and mix."""
    report = DataReport(method=method, max_length=cfg.max_length, overlong=cfg.overlong)
    if not cfg.datasets:
        raise DataError("no training data", [Problem("data.datasets", "the list is empty",
                                                     "add at least one dataset with a path")])
    ctx = LoadContext(method=method, system_prompt=cfg.inserted_system, report=report, fields=fields)
    train = load_sources(list(cfg.datasets), ctx)
    evals = load_sources(list(cfg.eval_datasets), ctx, eval_side=True)
    _fail_if_bad(report, cfg)
    judge_skipped(report, cfg)
    train, report.deduplicated = dedup(train) if cfg.dedup else (train, 0)
    if cfg.eval_datasets:
        evals, report.eval_deduplicated = dedup(evals)
        evals, report.leakage_removed = remove_leakage(train, evals)
        report.split = f"eval_datasets: {len(evals)} records"
    else:
        train, evals, report.split = holdout(train, cfg.eval_split, seed)
    train = mix(train, cfg, seed, report)
    _require_some(report, train, cfg)
    report.reasoning_examples = sum(1 for ex in train if ex.example.get("reasoning"))
    report.plain_examples = len(train) - report.reasoning_examples
    report.rewritten_turns, report.reasoning_ratio = cfg.rewritten_turns, cfg.reasoning_ratio
    report.train_records, report.eval_records = len(train), len(evals)
    if method_spec(method).records == "feedback":
        report.desirable = sum(1 for ex in train if ex.example["label"])
        report.undesirable = len(train) - report.desirable
    return report, train, evals


def holdout_chats(cfg: DataConfig, *, method: Method, seed: int, limit: int) -> list[list[dict[str, Any]]]:
    """Up to ``limit`` chats of the stage's holdout (eval_datasets, else its eval_split of the training data, the
    same records training held out), as messages with the system prompt training gave them; a preference
    record as its prompt and chosen reply. [] when the data cannot be read (moved files, a hub dataset offline)."""
    try:
        _, _, evals = _assemble(cfg, method=method, seed=seed)
    except (NovaError, OSError):
        return []
    chats = []
    for ex in evals[:limit]:
        example = ex.example
        messages = example.get("messages") or [*example.get("prompt", []), example.get("chosen") or
                                                example.get("completion") or {}]
        chats.append([{k: m[k] for k in ("role", "content", "reasoning_content") if k in m} for m in messages if m])
    return [c for c in chats if c]


def _require_some(report: DataReport, train: list[Example], cfg: DataConfig) -> None:
    if train:
        return
    paths = ", ".join(spec.path for spec in cfg.datasets)
    dropped = report.dropped_too_long + report.dropped_no_trained
    why = f", {dropped} too long for max_length {cfg.max_length}" if dropped else ""
    shown = report.problems[:5] or [Problem(paths, f"read {report.read} records, none usable{why}",
                                            "raise data.max_length" if dropped else None)]
    raise DataError(f"no usable training records in {paths} (read {report.read}, skipped "
                    f"{sum(report.skipped.values())}{why})", shown)


def _tokenize_all(cfg: DataConfig, tokenizer: Any, method: Method, dpo: Any, report: DataReport,
                  train: list[Example], evals: list[Example], *, build: bool) -> tuple[Any, Any]:
    model_name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
    needs_template = method_spec(method).cuts_prompts or any(ex.example["kind"] == "chat" for ex in [*train, *evals])
    template = ChatTemplate(tokenizer, model_name) if needs_template else None
    trains_replies = not method_spec(method).generates  # a generating method's stop is the sampler's
    if template is not None and trains_replies and template.behaviour.stop_problem:
        raise NovaError(f"the model cannot learn to stop: {template.behaviour.stop_problem}",
                        hint="use a model.chat_template that ends each reply with an end-of-turn token (or whose "
                        "next-turn marker is a special token of the tokenizer)")
    prompt_len, completion_len = _dpo_lengths(dpo)
    encoder = Encoder(tokenizer, template, method=method, max_length=cfg.max_length, overlong=cfg.overlong,
                      loss_on=cfg.loss_on, max_prompt_length=prompt_len, max_completion_length=completion_len,
                      turns=turn_settings(cfg))
    report.tokenizer = model_name
    if template is not None:
        _system_note(cfg, template, report, [*train, *evals])
    train_ds, report.tokens, report.train_records = _tokenize(train, encoder, cfg, report, build=build)
    eval_ds, report.eval_tokens, report.eval_records = (
        _tokenize(evals, encoder, cfg, report, build=build) if evals else (None, None, 0))
    _fail_if_bad(report, cfg)
    judge_skipped(report, cfg)
    if report.train_records == 0:
        _require_some(report, [], cfg)
    return train_ds, eval_ds


def _system_note(cfg: DataConfig, template: ChatTemplate, report: DataReport, examples: list[Example]) -> None:
    """Say when the template's own default system message reaches chats the config did not choose it for."""
    from nova.data.system import chats_without_system, default_note, served_system

    note = default_note(served_system(cfg, template), *chats_without_system(examples))
    if note and note not in report.notes:
        report.notes.append(note)


def turn_settings(cfg: DataConfig) -> TurnSettings:
    return TurnSettings(rewritten_turns=cfg.rewritten_turns, train_empty_think=cfg.train_empty_think)


def _num_proc(cfg: DataConfig, n: int) -> int | None:
    """Worker processes for the map. One process already tokenizes on every core (the Rust
    tokenizer is multi-threaded; forked workers lose that), so workers pay only where there are
    cores to spare for the Python side (rendering, masks): measured on 2 cores, 2 workers were
    slower than 1 process (23.8 s against 21.5 s for 100k chats; 90 s against 64 s under load)."""
    if cfg.num_proc is not None:
        return cfg.num_proc if cfg.num_proc > 1 else None
    cpus = os.cpu_count() or 1
    return min(cpus, 8) if n >= _PARALLEL_MIN_RECORDS and cpus >= _PARALLEL_MIN_CPUS else None


def _tokenize(examples: list[Example], encoder: Encoder, cfg: DataConfig, report: DataReport,
              *, build: bool) -> tuple[Any, TokenStats, int]:
    """Encode, count what was dropped and why; (the Dataset of kept rows when ``build``, stats, kept)."""
    num_proc = _num_proc(cfg, len(examples)) if build else None
    ds = _map(examples, encoder, num_proc) if num_proc else None
    if ds is not None:
        # Whole Arrow columns to Python at once (iterating a datasets Column formats row by row).
        cols = {c: ds.data.column(c).to_pylist() for c in _HELPERS if c in ds.column_names}
    else:
        cols, chunks = _encode_lists(examples, encoder, keep_ids=build)
        cols["where"] = [examples[j].where for j in cols["row"]]
    status: list[str] = cols["status"]
    keep = []
    for i, s in enumerate(status):
        if s.startswith("error:"):
            _, reason, message = s.split(":", 2)
            message, _, hint = message.partition("\x1f")
            report.add_problem(reason, Problem(cols["where"][i], message, hint or None))
        elif s == TOO_LONG:
            report.dropped_too_long += 1
        elif s == NO_TRAINED:  # truncation cut off every trained token: as good as too long
            report.dropped_no_trained += 1
        else:
            keep.append(i)
            report.truncated += s == TRUNCATED
    stats = _stats(cols, status, keep, cfg.max_length, report)
    if ds is not None:
        ds = ds.select(keep).remove_columns([c for c in _HELPERS if c in ds.column_names]).flatten_indices()
    elif build:
        ds = _dataset(chunks)
    return ds, stats, len(keep)


def _map(examples: list[Example], encoder: Encoder, num_proc: int) -> Any:
    """Multi-process batched datasets.map over the examples (as JSON strings)."""
    import datasets

    datasets.disable_progress_bars()  # library code does not print; the CLI reports counts
    ds = datasets.Dataset.from_dict({"where": [ex.where for ex in examples],
                                     "example": [json.dumps(ex.example, ensure_ascii=False) for ex in examples]})
    # A chat may become several rows: every input column is replaced (Encoder.__call__ carries "where").
    return ds.map(encoder, batched=True, batch_size=_BATCH, num_proc=num_proc,
                  remove_columns=["where", "example"], new_fingerprint=f"nova-{len(examples)}-{id(encoder)}")


def _kept(status: str) -> bool:
    return status in (OK, TRUNCATED)


def _encode_lists(examples: list[Example], encoder: Encoder, *,
                  keep_ids: bool) -> tuple[dict[str, list[Any]], list[Any]]:
    """Single process, two threads: while the Rust tokenizer encodes batch k (it releases the
    GIL and uses every core), this thread renders batch k+1; on 2 cores that hides most of the
    Python work. Token columns of kept rows go to Arrow batch by batch, so millions of Python
    ints never pile up (labels are built there from each row's trained token ranges, see
    _sft_arrow); bookkeeping columns stay lists."""
    from concurrent.futures import ThreadPoolExecutor

    from nova.console import task

    cols: dict[str, list[Any]] = {"status": [], "length": [], "trained": [], "masked": [], "row": []}
    chunks: list[Any] = []
    n = len(examples)
    with ThreadPoolExecutor(max_workers=1) as pool, task("tokenizing", n, quiet=n < _SAY_TOKENIZING,
                                                         line=f"tokenizing {n} records") as doing:
        pending = None
        for start in range(0, n, _ENCODE_BATCH):
            prepared = encoder.prepare([ex.example for ex in examples[start:start + _ENCODE_BATCH]])
            if pending is not None:
                _collect(pending[1].result(), cols, chunks, keep_ids, pending[0])
                doing.advance(_ENCODE_BATCH)
            pending = (start, pool.submit(encoder.finish, prepared, compact=True))
        if pending is not None:
            _collect(pending[1].result(), cols, chunks, keep_ids, pending[0])
            doing.advance(n - pending[0])
    return cols, chunks


def _collect(out: dict[str, list[Any]], cols: dict[str, list[Any]], chunks: list[Any], keep_ids: bool,
             first: int) -> None:
    """Append one batch's rows (``first``: the index of the batch's first example)."""
    out["row"] = [first + r for r in out["row"]]
    for key in _HELPERS:
        if key in out:
            cols.setdefault(key, []).extend(out[key])
    if keep_ids:
        rows = [i for i, s in enumerate(out["status"]) if _kept(s)]
        tokens = {k: v for k, v in out.items() if k not in _HELPERS}
        if len(rows) < len(out["status"]):
            tokens = {k: [v[i] for i in rows] for k, v in tokens.items()}
        if "input_ids" in tokens:  # SFT, compact: labels are token ranges (Encoder.finish)
            chunks.append(_sft_arrow(tokens["input_ids"], tokens["labels"]))
        else:
            chunks.append(_arrow(tokens))


def _arrow(columns: dict[str, list[Any]]) -> Any:
    """Token lists to an Arrow table of int64 lists, built from flat values and offsets (faster than
    pa.array on a list of lists, which converts and checks row by row); KTO's ``label`` is one bool a row,
    GRPO's ``record`` one JSON string."""
    import numpy as np
    import pyarrow as pa

    scalar = {"label": pa.bool_(), "record": pa.string()}
    return pa.table({name: pa.array(values, type=scalar[name]) if name in scalar else _list_array(values, np, pa)
                     for name, values in columns.items()})


def _list_array(rows: list[list[int]], np: Any, pa: Any) -> Any:
    offsets, values = _flat(rows, np)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def _flat(rows: list[list[int]], np: Any) -> tuple[Any, Any]:
    """(offsets, values) of a list of int lists; 32-bit offsets as pa.list_ uses (one batch of
    rows is far below 2**31 tokens)."""
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, rows), dtype=np.int64, count=len(rows)), out=offsets[1:])
    values = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(offsets[-1]))
    return offsets.astype(np.int32), values


def _sft_arrow(ids: list[list[int]], ranges: list[list[tuple[int, int]] | None]) -> Any:
    """input_ids and labels columns; labels from each row's trained token ranges (None: all
    trained) in one vectorized step: the id inside a range, IGNORE outside."""
    import numpy as np
    import pyarrow as pa

    offsets, values = _flat(ids, np)
    starts: list[int] = []
    ends: list[int] = []
    for row, spans in enumerate(ranges):
        base = int(offsets[row])
        if spans is None:
            starts.append(base)
            ends.append(int(offsets[row + 1]))
        else:
            starts += [base + a for a, _ in spans]
            ends += [base + b for _, b in spans]
    total = len(values)
    depth = np.cumsum(np.bincount(np.array(starts, dtype=np.int64), minlength=total + 1)
                      - np.bincount(np.array(ends, dtype=np.int64), minlength=total + 1))[:total]
    labels = np.where(depth > 0, values, IGNORE)
    offsets = pa.array(offsets)
    return pa.table({"input_ids": pa.ListArray.from_arrays(offsets, pa.array(values)),
                     "labels": pa.ListArray.from_arrays(offsets, pa.array(labels))})


def _dataset(chunks: list[Any]) -> Any:
    """An Arrow-backed datasets.Dataset of int64 token lists (what datasets.map would produce)."""
    import datasets
    import pyarrow as pa
    from datasets.table import InMemoryTable

    if not chunks:
        return datasets.Dataset.from_dict({"input_ids": [], "labels": []})
    # A fingerprint given up front: otherwise datasets hashes the whole in-memory table (~1 s / 100k rows).
    return datasets.Dataset(InMemoryTable(pa.concat_tables(chunks)), fingerprint=f"nova-{uuid.uuid4().hex}")


def _stats(cols: dict[str, list[Any]], status: list[str], keep: list[int], max_length: int,
           report: DataReport) -> TokenStats:
    lengths, trained, masked = cols["length"], cols["trained"], cols["masked"]
    measured = [lengths[i] for i, s in enumerate(status) if not s.startswith("error:")]
    if "prompt_cut" in cols:
        cut_p, cut_c = cols["prompt_cut"], cols["completion_cut"]
        report.prompt_truncated += sum(1 for i in keep if cut_p[i])
        report.completion_truncated += sum(1 for i in keep if cut_c[i])
    stats = TokenStats.from_lengths(measured, max_length, sum(trained[i] for i in keep),
                                    sum(masked[i] for i in keep))
    if "reasoning" in cols:  # SFT: the thinking/plain mix, chats rendered turn by turn, empty think blocks
        reasoning, per_turn = cols["reasoning"], cols["per_turn"]
        stats.reasoning_sequences = sum(1 for i in keep if reasoning[i])
        stats.reasoning_trained_tokens = sum(trained[i] for i in keep if reasoning[i])
        report.per_turn_chats += sum(1 for n in per_turn if n)
        report.per_turn_sequences += sum(per_turn)
        report.empty_think_masked += sum(cols["empty_think"][i] for i in keep)
    return stats
