"""Renames and deletes that work on Windows: onto an existing directory, and while another process
holds a file for a moment (a sharing violation). Windows' semantics are simulated through os.replace
and unlink, where nova.files meets the OS; Linux's own behaviour must stay as it was."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nova import files
from nova.errors import NovaError
from nova.files import atomic_dir, looks_like_local_path, remove_tree, replace_path, write_text_atomic


def _sharing_violation(path: object) -> PermissionError:
    exc = PermissionError(13, "The process cannot access the file because it is being used by another process",
                          str(path))
    exc.winerror = 32  # type: ignore[attr-defined]  # what Windows sets; absent elsewhere
    return exc


def windows_replace(held_for: int = 0) -> tuple[Callable[[Any, Any], None], list[str]]:
    """os.replace as on Windows: a directory cannot be replaced (access denied), and the first
    ``held_for`` calls meet a file another process holds."""
    calls: list[str] = []
    real = os.replace

    def replace(src: Any, dst: Any) -> None:
        calls.append(f"{Path(src).name} -> {Path(dst).name}")
        if len(calls) <= held_for:
            raise _sharing_violation(dst)
        if Path(dst).is_dir():
            exc = PermissionError(13, "Access is denied", str(dst))
            exc.winerror = 5  # type: ignore[attr-defined]
            raise exc
        real(src, dst)

    return replace, calls


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "RETRY_DELAYS_S", (0.0, 0.0, 0.0))


def test_a_directory_replaces_an_existing_one_as_windows_allows(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    replace, calls = windows_replace(held_for=2)
    monkeypatch.setattr(files.os, "replace", replace)
    out = tmp_path / "checkpoint-8"
    out.mkdir()
    (out / "old.bin").write_text("old")
    new = tmp_path / ".tmp-checkpoint-8"
    new.mkdir()
    (new / "new.bin").write_text("new")
    replace_path(new, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-8"]  # the old one moved aside, then deleted
    assert [p.name for p in out.iterdir()] == ["new.bin"]
    assert len(calls) == 4  # two held, then aside, then into place


def test_atomic_dir_replaces_an_earlier_output_on_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    replace, _ = windows_replace()
    monkeypatch.setattr(files.os, "replace", replace)
    out = tmp_path / "merged"
    out.mkdir()
    (out / "model.safetensors").write_text("old")
    with atomic_dir(out, force=True) as tmp:
        (tmp / "model.safetensors").write_text("new")
    assert (out / "model.safetensors").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["merged"]


def test_a_held_file_is_retried_then_named_in_one_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "nova.pid"
    replace, calls = windows_replace(held_for=2)
    monkeypatch.setattr(files.os, "replace", replace)
    write_text_atomic(target, "one")  # held twice (nova status reading it), then through
    assert target.read_text() == "one" and len(calls) == 3
    replace, calls = windows_replace(held_for=100)
    monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(NovaError, match=r"cannot replace .*nova.pid: another program has it open"):
        write_text_atomic(target, "two")
    assert len(calls) == len(files.RETRY_DELAYS_S) + 1  # bounded
    assert target.read_text() == "one" and sorted(os.listdir(tmp_path)) == ["nova.pid"]  # no temp file left


def test_a_real_permission_error_is_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def denied(src: Any, dst: Any) -> None:
        calls.append(dst)
        raise PermissionError(13, "Permission denied", str(dst))  # POSIX: no winerror

    monkeypatch.setattr(files.os, "replace", denied)
    with pytest.raises(PermissionError):
        write_text_atomic(tmp_path / "x.json", "{}")
    assert len(calls) == 1


def test_remove_tree_waits_out_a_held_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = tmp_path / "old"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "held.bin").write_text("x")
    real_unlink = os.unlink
    held = {"left": 2}

    def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(path).name == "held.bin" and held["left"]:
            held["left"] -= 1
            raise _sharing_violation(path)
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    remove_tree(tree)
    assert not tree.exists()


def test_windows_paths_are_local_paths_not_hub_ids() -> None:
    for path in ("d:\\Github\\models\\qwen", "D:/models/qwen", "\\\\server\\share\\m", "models\\qwen", "./m", "~/m"):
        assert looks_like_local_path(path), path
    for hub_id in ("Qwen/Qwen3-1.7B", "mistralai/Mistral-7B-v0.3", "gpt2"):
        assert not looks_like_local_path(hub_id), hub_id


def test_a_missing_windows_model_path_is_said_to_be_missing(tmp_path: Path) -> None:
    from nova.config.schema import ModelConfig
    from nova.model.loading import resolve_base

    with pytest.raises(NovaError, match=r"model.base 'd:\\Github\\models\\qwen' does not exist"):
        resolve_base(ModelConfig(base="d:\\Github\\models\\qwen"))
