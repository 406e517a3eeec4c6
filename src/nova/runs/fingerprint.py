"""What a stage was trained with, sealed into its checkpoints and DONE record, compared on resume.

A fingerprint is a flat mapping of dotted keys to JSON values (``training.learning_rate``,
``data.key``, ``model.identity``, ``chain.doica``, ...) plus its digest. Resuming is allowed
only when the fingerprint of the config now equals the one sealed into the checkpoint; any
difference stops the run and names each key that differs (old -> new).

Two keys may change on resume when the user says so (``--resume-with-changes``): the learning
rate and max_steps. They are applied for real (the restored scheduler gets the new rate) and
recorded in the run's config.yaml. Settings that cannot change what is learned (logging, eval
and save cadence, checkpoint retention, monitor thresholds, micro batch and accumulation at the
same effective batch, gradient checkpointing) are not in the fingerprint at all.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

ADJUSTABLE = ("training.learning_rate", "training.max_steps")
# Left out of the fingerprint: they change how a run is watched or how it fits in memory, not what it learns.
MUTABLE_TRAINING = ("logging_steps", "eval_steps", "save_steps", "save_total_limit", "report_to", "oom_retries",
                    "gpu", "auto_fit", "gradient_checkpointing", "micro_batch_size", "gradient_accumulation_steps",
                    "packing", "liger_kernels", "torch_compile")


@dataclass(frozen=True)
class Fingerprint:
    """The training-relevant settings of one stage, flattened, with a digest."""

    values: dict[str, Any]

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.values, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def to_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, "values": self.values}

    @classmethod
    def from_dict(cls, data: Any) -> Fingerprint | None:
        """The fingerprint stored in a seal or record, or None when there is none (or it is damaged)."""
        if not isinstance(data, dict) or not isinstance(data.get("values"), dict):
            return None
        return cls(dict(data["values"]))


def read_recorded(record: Any, key: str) -> tuple[Fingerprint | None, str | None]:
    """The fingerprint ``record[key]`` (a seal, DONE or COMPLETE entry) and, when it cannot be trusted, why.

    (None, None): nothing recorded (written by a nova older than fingerprints). (None, reason): one was
    written but is not one nova writes, or its values no longer give its digest: it was changed afterwards.
    """
    if not isinstance(record, dict) or record.get(key) is None:
        return None, None
    raw = record[key]
    found = Fingerprint.from_dict(raw)
    if found is None:
        return None, "it is not a fingerprint as nova writes one"
    if raw.get("digest") != found.digest:
        return None, "its values no longer give its digest"
    return found, None


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"prefix.a.b": 1}`` (lists stay values)."""
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out.update(flatten(f"{prefix}.{key}" if prefix else str(key), item))
    return out


def differences(old: Fingerprint, new: Fingerprint) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) for every key that differs, sorted by key."""
    keys = sorted(set(old.values) | set(new.values))
    return [(k, old.values.get(k, "(unset)"), new.values.get(k, "(unset)")) for k in keys
            if old.values.get(k, "(unset)") != new.values.get(k, "(unset)")]


def show(value: Any) -> str:
    """A value for a one-line message: short, ASCII."""
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= 60 else text[:57] + "..."
