"""The base model's identity covers every byte of its weights, hashed once per file (cached by size and times)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nova.model import identity
from nova.model.identity import FULL_PREFIX, directory_identity, is_legacy, legacy_identity

MiB = 1024**2


def _model(path: Path) -> Path:
    path.mkdir()
    (path / "config.json").write_text('{"model_type": "llama"}')
    (path / "model.safetensors").write_bytes(os.urandom(5 * MiB))
    return path


def _flip_middle_keeping_size_and_mtime(file: Path) -> None:
    st = file.stat()
    with file.open("r+b") as fh:
        fh.seek(2 * MiB + 12345)
        byte = fh.read(1)
        fh.seek(2 * MiB + 12345)
        fh.write(bytes([byte[0] ^ 0xFF]))
    os.utime(file, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert file.stat().st_size == st.st_size and file.stat().st_mtime_ns == st.st_mtime_ns


def test_a_change_outside_the_first_and_last_mib_changes_the_identity(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOVA_CACHE_DIR", str(tmp_path / "cache"))
    model = _model(tmp_path / "m")
    before, weak_before = directory_identity(model), legacy_identity(model)
    assert before.startswith(FULL_PREFIX)
    _flip_middle_keeping_size_and_mtime(model / "model.safetensors")
    assert legacy_identity(model) == weak_before  # what the older identity missed
    assert directory_identity(model) != before


def test_each_file_is_hashed_once_then_read_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOVA_CACHE_DIR", str(tmp_path / "cache"))
    model = _model(tmp_path / "m")
    calls: list[Path] = []
    real = identity.hash_file
    monkeypatch.setattr(identity, "hash_file", lambda p: calls.append(p) or real(p))
    first = directory_identity(model)
    second = directory_identity(model)
    assert first == second and len(calls) == 1
    assert (tmp_path / "cache" / identity.CACHE_FILE).is_file()
    os.utime(model / "model.safetensors")  # touched: hashed again
    assert directory_identity(model) == first and len(calls) == 2


def test_an_unwritable_cache_only_costs_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("not a directory")
    monkeypatch.setenv("NOVA_CACHE_DIR", str(tmp_path / "file"))
    model = _model(tmp_path / "m")
    assert directory_identity(model) == directory_identity(model)


def test_legacy_identities_are_told_apart() -> None:
    assert is_legacy("0123456789abcdef01234567")
    assert not is_legacy(FULL_PREFIX + "0123") and not is_legacy("hub:x/y@main") and not is_legacy(None)


def test_a_run_sealed_with_the_older_identity_resumes_while_it_matches(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Work sealed by an older nova (first and last MiB) is compared with that identity, not refused."""
    import json
    from types import SimpleNamespace

    from nova.runs.layout import RunDir
    from nova.train.fingerprint import base_identity

    monkeypatch.setenv("NOVA_CACHE_DIR", str(tmp_path / "cache"))
    model = _model(tmp_path / "m")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    sealed = {"values": {"model.identity": legacy_identity(model)}, "digest": "x"}
    (run_dir / "COMPLETE").write_text(json.dumps({"fingerprints": [sealed]}))
    run = SimpleNamespace(model_cfg=SimpleNamespace(base=str(model), revision=None), run=RunDir(run_dir),
                          planned=SimpleNamespace(stages=[]))
    assert base_identity(run, str(model), keep_legacy=True) == legacy_identity(model)  # type: ignore[arg-type]
    assert base_identity(run, str(model), keep_legacy=False) == directory_identity(model)  # type: ignore[arg-type]
    (model / "model.safetensors").write_bytes(os.urandom(5 * MiB))  # another model: the full identity, no match
    assert base_identity(run, str(model), keep_legacy=True) == directory_identity(model)  # type: ignore[arg-type]
