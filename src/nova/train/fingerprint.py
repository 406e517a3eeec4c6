"""Fingerprints of a phase's stages, and the check that a resume continues the same training.

The check runs before any weights load and before data is tokenized (the data part of a
fingerprint is the data cache key: file contents, data settings and tokenizer, hashed). Every
reuse of earlier work goes through ``check_resume``: a stage's DONE record and the checkpoint
a stage would resume from. A difference stops the run with the keys that differ and the two
ways forward (restart with ``--fresh``, or revert the change).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nova.errors import Problem, ProblemList
from nova.model.trained import trained_kind
from nova.plan import PlannedPhase, PlannedStage
from nova.runs.fingerprint import ADJUSTABLE, MUTABLE_TRAINING, Fingerprint, differences, read_recorded, show
from nova.runs.record import AdapterRef

if TYPE_CHECKING:
    from nova.train.context import PhaseRun


class ResumeMismatch(ProblemList):
    """Earlier work of a stage was trained with other settings than the config now asks for."""


@dataclass(frozen=True)
class FingerprintInputs:
    """What a phase's fingerprints are made of, besides its config."""

    model_identity: str
    compute_dtype: str
    data_keys: list[str | None]  # per stage, the data cache key (None: not hashable, e.g. a hub dataset)
    chain: Sequence[AdapterRef]
    world: int = 1  # ranks: the effective batch is micro batch x accumulation x ranks


def adapter_digest(adapter_dir: Path) -> str:
    """sha256 of a saved adapter's weights (adapters are small; the whole file is hashed)."""
    import hashlib

    h = hashlib.sha256()
    with (adapter_dir / "adapter_model.safetensors").open("rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()[:24]


def stage_fingerprint(planned: PlannedPhase, stage: PlannedStage, inputs: FingerprintInputs,
                      chain_digests: dict[str, str], previous: str | None) -> Fingerprint:
    """The fingerprint of one stage: model, LoRA (or full fine-tuning), method, schedule, seed, data, and
    its starting point."""
    model = planned.model.model_dump(mode="json", exclude={"models_dir", "trust_remote_code", "compute_dtype"})
    training = stage.config.training.model_dump(mode="json", exclude=set(MUTABLE_TRAINING))
    values: dict[str, Any] = {f"model.{k}": v for k, v in model.items()}
    values["model.identity"] = inputs.model_identity
    values["model.compute_dtype"] = inputs.compute_dtype
    values.update(trained_kind(planned.full).fingerprint(planned.phase.lora))  # LoRA settings, or adapter: full
    values["method"] = stage.method
    settings = stage.config.method_settings  # dpo, kto, orpo or simpo: what the method learns with
    if settings is not None:
        values.update({f"{stage.method}.{k}": v for k, v in settings.model_dump(mode="json").items()})
    values.update({f"training.{k}": v for k, v in training.items()})
    values["training.effective_batch_size"] = stage.config.training.effective_batch_size * inputs.world
    key = inputs.data_keys[stage.index]
    values["data.key"] = key if key is not None else json.dumps(
        stage.config.data.model_dump(mode="json", exclude={"num_proc", "cache_dir"}), sort_keys=True)
    values.update({f"chain.{name}": digest for name, digest in chain_digests.items()})
    retention = planned.phase.retention
    if stage.config.spec.trains_sequences and retention.replay > 0:  # replayed data and its KL term change it
        values.update({f"retention.{k}": v for k, v in retention.model_dump(mode="json").items()})
    values["start.previous_stage"] = previous
    return Fingerprint(values)


def phase_fingerprints(planned: PlannedPhase, inputs: FingerprintInputs,
                       stages: Sequence[PlannedStage] | None = None) -> list[Fingerprint]:
    """One fingerprint per stage (the plan's, or ``stages`` as they will run), each starting from the one before."""
    chain = {ref.name: adapter_digest(ref.path) for ref in inputs.chain}
    out: list[Fingerprint] = []
    for stage in stages if stages is not None else planned.stages:
        out.append(stage_fingerprint(planned, stage, inputs, chain, out[-1].digest if out else None))
    return out


def _describe(key: str, old: Any, new: Any) -> str:
    if key == "data.key":
        return "the data (file contents, data settings or tokenizer) changed"
    if key == "model.identity":
        return "the base model's weights are not the same files"
    if key.startswith("chain."):
        return f"the adapter of earlier phase '{key[6:]}' changed (it was retrained)"
    if key == "start.previous_stage":
        return "the stage before this one was trained differently"
    return f"{show(old)} -> {show(new)}"


def mismatch(what: str, where: Path, old: Fingerprint | None, new: Fingerprint, *,
             allow_adjust: bool, fix: str | None = None, changed: str | None = None) -> ResumeMismatch | None:
    """None when ``old`` may be reused for ``new``; else the error that says why, key by key.

    ``fix`` replaces the default way forward (restart the stage with --fresh, or revert). ``changed``: why
    the recorded fingerprint cannot be trusted (edited or damaged after it was written).
    """
    if changed is not None:
        return ResumeMismatch(f"{what} {where} has a fingerprint that was changed after nova wrote it ({changed}), "
                              "so nova cannot tell what it was trained with",
                              [Problem(str(where), "fingerprint changed", fix or "add --fresh to train this stage "
                                       "again")])
    if old is None:
        return ResumeMismatch(f"{what} {where} has no fingerprint (written by an older nova), so nova cannot "
                              "tell what it was trained with",
                              [Problem(str(where), "no fingerprint", fix or "add --fresh to train this stage again")])
    diffs = differences(old, new)
    if allow_adjust:
        diffs = [d for d in diffs if d[0] not in ADJUSTABLE]
    if not diffs:
        return None
    only_adjustable = all(k in ADJUSTABLE for k, _, _ in diffs)
    if fix is None:
        fix = ("add --resume-with-changes to continue with the new value, --fresh to restart the stage, or "
               "revert the change") if only_adjustable else "add --fresh to restart the stage, or revert the change"
    problems = [Problem(key, _describe(key, a, b)) for key, a, b in diffs]
    return ResumeMismatch(f"{what} {where} was trained with other settings ({fix})", problems)


def changes(old: Fingerprint, new: Fingerprint) -> dict[str, list[Any]]:
    """The adjustable keys that differ, as {key: [old, new]} (recorded in config.yaml)."""
    return {k: [a, b] for k, a, b in differences(old, new) if k in ADJUSTABLE}


# ---------------------------------------------------------------- the checks on a phase's earlier work


def compute_fingerprints(run: PhaseRun, stages: Sequence[PlannedStage], source: str, compute_dtype: str,
                         tokenizer: Any, *, keep_legacy: bool | None = None) -> tuple[Fingerprint, ...]:
    """The fingerprint of every stage of the phase as the config asks for it now (no weights loaded).

    ``keep_legacy`` (default: a resume): work sealed by an older nova with the weaker model identity
    is compared with that identity (see ``base_identity``).
    """
    from nova.data import data_key

    keys = [data_key(s.config.data, tokenizer, method=s.method, seed=s.config.training.seed,
                     dpo=s.config.length_settings)
            for s in stages]
    keep = run.resume if keep_legacy is None else keep_legacy
    inputs = FingerprintInputs(base_identity(run, source, keep), compute_dtype, keys, run.chain, run.ranks.world)
    return tuple(phase_fingerprints(run.planned, inputs, stages))


def base_identity(run: PhaseRun, source: str, keep_legacy: bool) -> str:
    """The base's identity over every byte of its weights (nova.model.identity); but where the earlier work
    a resume reuses was sealed by an older nova with the weaker identity (first and last MiB of each file),
    and that one still matches, the weaker one: so the resume's fingerprints chain as they were sealed."""
    from nova.model.identity import is_legacy, legacy_identity, local_directory, model_identity

    model = run.model_cfg
    if keep_legacy:
        sealed = [v for v in _sealed_identities(run) if is_legacy(v)]
        directory = local_directory(source, model.revision) if sealed else None
        if directory is not None and legacy_identity(directory) in sealed:
            return legacy_identity(directory)
    return model_identity(model.base, source, model.revision)


def _sealed_identities(run: PhaseRun) -> list[Any]:
    """The model identities recorded in the phase's COMPLETE, its stages' DONE and their newest checkpoints."""
    from nova.runs.checkpoints import list_checkpoints, seal_fingerprint

    rd = run.run
    records: list[Any] = list(_recorded(rd.complete_marker, "fingerprints") or [])
    for stage in run.planned.stages:
        records.append(_recorded(rd.stage_done(stage.name), "fingerprint"))
        found = list_checkpoints(rd.checkpoints(stage.name))
        if found:
            records.append(seal_fingerprint(found[-1][1]))
    return [r["values"].get("model.identity") for r in records
            if isinstance(r, dict) and isinstance(r.get("values"), dict)]


def _recorded(path: Path, key: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def check_checkpoint(stage: PlannedStage, checkpoint: Path, new: Fingerprint,
                     resume_with_changes: bool) -> dict[str, Any]:
    """Raise unless ``checkpoint`` continues the stage as configured (its fingerprint ``new``); returns the
    allowed changes applied (``resume_with_changes``: the learning rate and max_steps may differ)."""
    from nova.runs.checkpoints import checkpoint_step, read_seal

    old, changed = read_recorded(read_seal(checkpoint), "fingerprint")
    problem = mismatch(f"stage {stage.label}: checkpoint", checkpoint, old, new, allow_adjust=resume_with_changes,
                       changed=changed)
    if problem is not None:
        raise problem
    applied = changes(old, new) if old is not None else {}
    return {"at_step": checkpoint_step(checkpoint), **applied} if applied else {}


def check_reuse(run: PhaseRun, stages: Sequence[PlannedStage],
                fingerprints: Sequence[Fingerprint]) -> dict[str, dict[str, Any]]:
    """Before any weights load: every finished stage and the checkpoint an unfinished one would resume
    from must have been trained with the settings asked for now. Returns the allowed changes per stage."""
    from nova.runs.checkpoints import list_checkpoints

    applied: dict[str, dict[str, Any]] = {}
    rd = run.run
    for stage in stages:
        if rd.stage_is_done(stage.name):
            old, changed = read_recorded({"f": _recorded(rd.stage_done(stage.name), "fingerprint")}, "f")
            problem = mismatch(f"stage {stage.label}: its finished adapter in", rd.stage_dir(stage.name), old,
                               fingerprints[stage.index], allow_adjust=False, changed=changed,
                               fix="add --fresh to train the phase again, or revert the change")
            if problem is not None:
                raise problem
            continue
        found = list_checkpoints(rd.checkpoints(stage.name))
        if found:
            change = check_checkpoint(stage, found[-1][1], fingerprints[stage.index], run.resume_with_changes)
            if change:
                applied[stage.name] = change
        break  # later stages have not started: nothing of theirs is reused
    return applied


def check_finished(run: PhaseRun, fingerprints: Sequence[Fingerprint]) -> None:
    """A finished phase is reused (skipped) only when it was trained as the config asks for now."""
    recorded = _recorded(run.run.complete_marker, "fingerprints")
    olds = [read_recorded({"f": r}, "f") for r in recorded] if isinstance(recorded, list) else []
    if len(olds) != len(fingerprints):
        olds = [(None, None)] * len(fingerprints)
    for stage, (old, changed), new in zip(run.planned.stages, olds, fingerprints, strict=True):
        problem = mismatch(f"phase {run.phase.name} finished, but stage {stage.label} in", run.run_dir, old, new,
                           allow_adjust=False, changed=changed, fix="add --force to train it again, or revert the "
                           "change")
        if problem is not None:
            raise problem


def keep_effective_batch(run: PhaseRun,
                         stages: tuple[PlannedStage, ...]) -> tuple[tuple[PlannedStage, ...], list[str]]:
    """A stage resumed on a different number of ranks: set gradient accumulation so that micro batch x
    accumulation x ranks equals the checkpoint's effective batch (when it divides); returns the stages as
    they will run and what it said.

    Only the accumulation moves, and only when the checkpoint's other settings are what the config
    asks for now (the fingerprint check after this still compares everything else).
    """
    from nova.runs.checkpoints import list_checkpoints, read_seal

    notes: list[str] = []
    out = []
    rd, world = run.run, run.ranks.world
    for stage in stages:
        config = stage.config
        found = list_checkpoints(rd.checkpoints(stage.name)) if not rd.stage_is_done(stage.name) else []
        seal = read_seal(found[-1][1]) if found else None
        old = Fingerprint.from_dict(seal.get("fingerprint")) if seal else None
        old_world = seal.get("world_size", 1) if seal else 1
        if old is not None and old_world != world:
            target = old.values.get("training.effective_batch_size")
            per_step = config.training.micro_batch_size * world
            if isinstance(target, int) and target % per_step == 0 and target // per_step >= 1:
                accum = target // per_step
                if accum != config.training.gradient_accumulation_steps:
                    notes.append(f"[{stage.label}] resuming on {world} rank(s) instead of {old_world}: "
                                 f"gradient_accumulation_steps {config.training.gradient_accumulation_steps} -> "
                                 f"{accum} keeps the effective batch {target}")
                    config = config.changed(training=config.training.changed(gradient_accumulation_steps=accum))
        out.append(replace(stage, config=config))
    return tuple(out), notes
