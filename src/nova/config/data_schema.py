"""The ``data:`` section of a phase or stage config.

Kept in its own module because the data pipeline (``nova.data``) owns these settings; the
root schema in ``nova.config.schema`` only embeds them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from nova.config.base import MAX_RECORDS, MAX_TOKENS, Section
from nova.data.formats import FIELDS, FORMAT_CHOICES, FORMATS
from nova.errors import printable
from nova.files import did_you_mean, looks_like_local_path

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(?<!\.jsonl)(?<!\.json)(?<!\.csv)(?<!\.parquet)$")

DataFormat = Literal[FORMAT_CHOICES]  # type: ignore[valid-type]  # the table in nova.data.formats


class DatasetSpec(Section):
    """One data source: a file or a directory of files, read with one format."""

    path: str = Field(description="A .jsonl, .json, .csv or .parquet file, a directory of such files, or a "
                      "hub dataset id (owner/name; needs network). Relative paths are relative to the directory "
                      "nova runs in.")
    format: DataFormat = Field("auto", description="Record shape; 'auto' detects it per file from the fields: " +
                               "; ".join(f"'{f.name}': {f.summary}" for f in FORMATS) + " (docs/data.md).")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Map the file's field names to nova's, e.g. {prompt: question, chosen: response_j}. nova's "
        f"fields: {', '.join(FIELDS)}; and for a grpo stage the fields its rewards read, of any name.",
    )
    roles: dict[str, Literal["system", "user", "assistant", "tool"]] = Field(
        default_factory=dict, description="Map the file's role values to nova's, in every message's role (or "
        "ShareGPT's from), e.g. {chatgpt: assistant, model: assistant, human: user}; recorded, and part of the data's "
        "fingerprint.")
    max_samples: int | None = Field(
        None, gt=0, le=MAX_RECORDS, description="Use at most this many records of this source (the first valid ones).")
    weight: float | None = Field(
        None, gt=0, le=1_000_000, description="Relative share of this source in the training mix: repeats or "
        "samples its records (seeded); when any source has a weight, a source without one counts as 1.")
    ignore: list[str] = Field(
        default_factory=list, max_length=100, description="Globs of files in a data directory that are not data "
        "(e.g. ['*.txt', 'raw/*']), matched case-insensitively against each file's name and its path inside the "
        "directory. A directory holding files nova cannot read (.txt, .tsv, .zip, ...) is refused unless they are "
        "named here; either way the data report counts every file not read.")
    enable_thinking: bool | None = Field(
        None, description="Passed to chat templates that take it, for this source's records (a record's own "
        "enable_thinking field wins): Qwen3 with false writes an empty think block into the prompt, the way it "
        "answers without thinking. Unset: the template's default.")

    @field_validator("path")
    @classmethod
    def _path_exists(cls, value: str, info: ValidationInfo) -> str:
        # Checked here so a typo'd path fails at config time, naming the key, not 40 minutes in.
        # Not for a config read back from a run directory: it trained, and may have moved since.
        if info.context and info.context.get("recorded"):
            return value
        # A hub id (owner/name, no data-file suffix) is checked when it is read, where offline gets
        # its own clear message.
        path = Path(value).expanduser()
        # "data/doica" where ./data exists is a mistyped local path, not a hub id.
        looks_local = not _HUB_ID.match(value) or path.parent.is_dir() or looks_like_local_path(value)
        if not path.exists() and looks_local:
            close = did_you_mean(value)
            raise ValueError(f"data file or directory not found: {printable(value)}"
                             + (f" (did you mean {printable(close)}?)" if close else ""))
        return value


class DataConfig(Section):
    """Where the training data comes from and how it is checked, split and tokenized."""

    datasets: list[DatasetSpec] = Field(
        default_factory=list, description="Training sources, mixed in order. At least one is required to train.")
    eval_datasets: list[DatasetSpec] = Field(
        default_factory=list, description="Explicit holdout sources; when set, eval_split is not used.")
    eval_split: float = Field(
        0.1, ge=0, lt=1, description="Fraction of the training records held out for eval (fixed seed).")
    max_samples: int | None = Field(None, gt=0, le=MAX_RECORDS, description="Cap on training records after mixing.")
    max_length: int = Field(1024, gt=8, le=MAX_TOKENS, description="Longest tokenized sequence, in tokens.")
    overlong: Literal["truncate", "drop"] = Field(
        "truncate", description="What happens to sequences longer than max_length (always reported).")
    on_error: Literal["fail", "skip"] = Field(
        "fail", description="A bad record stops the run ('fail') or is skipped and counted ('skip').")
    skip_warn_share: float = Field(
        0.05, ge=0, le=1, description="With on_error: skip, the share of records skipped above which the data report, "
        "preflight and nova train --dry-run warn, naming the top reasons.")
    skip_fail_share: float = Field(
        0.5, ge=0, le=1, description="With on_error: skip, the share of records skipped above which the data is "
        "refused (preflight fails, training does not start): most of the data being unusable is a bug, not noise.")
    dedup: bool = Field(True, description="Remove exact duplicates (after whitespace normalization) from train.")
    system_prompt: str | None = Field(
        None, description="System message added to chats that have none; also what nova serves with (smoke "
        "prompts, nova infer, the merged model's and GGUF's chat template, the Ollama Modelfile's SYSTEM).")
    default_system: Literal["keep", "none"] | None = Field(
        None, description="Chats without a system message, when system_prompt is unset: some chat templates write "
        "their own default into them (SmolLM2: 'You are a helpful AI assistant named SmolLM...', Qwen2.5: 'You are "
        "Qwen...'). keep: train and serve with that default; none: give those chats an empty system message (the "
        "template then writes an empty system turn, not its default text). Unset: keep, and nova data check, "
        "preview and the training log say how many chats get the default.")
    loss_on: Literal["assistant", "all"] = Field(
        "assistant", description="Train on assistant tokens only (default) or on the whole sequence.")
    num_proc: int | None = Field(None, gt=0, le=1024, description="Processes for tokenization; default picks by size.")
    cache_dir: str = Field(".nova-cache", description="Where tokenized datasets are cached (by content hash).")
    shard_records: int = Field(
        50_000, ge=100, le=MAX_RECORDS, description="Records per shard of the tokenized cache: tokenization writes "
        "shard by shard, so a killed run's next start tokenizes only the shards that were not finished.")
    streaming: bool = Field(
        False, description="Read, check, split and tokenize the data one batch at a time instead of holding every "
        "record in memory first: for data larger than RAM. The same checks and counts (said as they are reached); "
        "eval_split holds out each record by its own seeded hash (the share is eval_split up to sampling noise); "
        "weight, reasoning_ratio and data.max_samples (they resample the whole set) are refused. docs/data.md.")
    stream_buffer_mb: int = Field(
        256, ge=8, le=1_048_576, description="With streaming: the memory, in MiB, that records and their tokens "
        "take while they are read and tokenized (batches are sized to it); tokenized rows go to disk as they come.")
    rewritten_turns: Literal["every", "last"] = Field(
        "every", description="For chat templates that render earlier turns differently once later turns follow "
        "(Qwen3, QwQ and DeepSeek-R1 drop past reasoning): each trained assistant turn is rendered as the final "
        "turn of its own prefix, as the model sees it at inference, one sequence per turn ('every', keeps all the "
        "data), or only the last assistant turn is trained ('last'). Other templates give one sequence per chat.")
    train_empty_think: bool = Field(
        False, description="Train the empty think block a chat template writes into a reply without reasoning "
        "(Qwen3: <think></think>). Off by default: learning it teaches the model to skip thinking; the reply and "
        "its end-of-turn token are still trained.")
    reasoning_ratio: float | None = Field(
        None, gt=0, lt=1, description="Share of training chats with reasoning (e.g. 0.5 for a 50/50 mix of "
        "thinking and plain replies), held by repeating or sampling each group (seeded) after the source "
        "weights; the data report shows the mix either way.")

    @property
    def inserted_system(self) -> str | None:
        """The system message nova adds to chats without one (None: none is added)."""
        if self.system_prompt:
            return self.system_prompt
        return "" if self.default_system == "none" else None

    @model_validator(mode="after")
    def _streaming_fits(self, info: ValidationInfo) -> DataConfig:
        # What needs the whole set in memory cannot stream; said at config time, naming the setting.
        if not self.streaming or (info.context and info.context.get("recorded")):
            return self
        if self.max_samples is not None:
            raise ValueError("data.max_samples samples the whole mixed set, which streaming never holds: remove it "
                             "(a source's own max_samples works) or set streaming: false")
        if self.reasoning_ratio is not None:
            raise ValueError("data.reasoning_ratio resamples the whole set, which streaming never holds: remove it "
                             "or set streaming: false")
        for spec in [*self.datasets, *self.eval_datasets]:
            if spec.weight is not None:
                raise ValueError(f"weight of {printable(spec.path)} resamples the whole set, which streaming never "
                                 "holds: remove the weights or set streaming: false")
            if _HUB_ID.match(spec.path) and not Path(spec.path).expanduser().exists() and \
                    not looks_like_local_path(spec.path):
                from nova.system import hub_client

                raise ValueError(f"streaming reads local files; {printable(spec.path)} is a hub dataset: download "
                                 f"it once ({hub_client()} download {printable(spec.path)} --repo-type dataset "
                                 "--local-dir DIR) and set path: DIR")
        return self

    @model_validator(mode="after")
    def _eval_source_is_single(self, info: ValidationInfo) -> DataConfig:
        # Both set would silently ignore one of them; make the user choose. A run's recorded
        # config.yaml lists every key (eval_split too), so there it is not a user's choice.
        recorded = bool(info.context and info.context.get("recorded"))
        if self.eval_datasets and "eval_split" in self.model_fields_set and self.eval_split > 0 and not recorded:
            raise ValueError("set either eval_datasets or eval_split, not both")
        return self
