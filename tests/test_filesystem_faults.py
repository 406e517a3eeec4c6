"""Filesystem faults are one clear line with the path and the fix: a full disk, a read-only filesystem, a file
where a directory should be, a path too long; never "internal error"."""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import pytest

from nova import files
from nova.errors import NovaError
from nova.files import check_writable_dir, os_error


@pytest.mark.parametrize(("exc", "says"), [
    (OSError(errno.ENOSPC, "No space left on device", "/data/run/x.pt"),
     "the disk is full: cannot write /data/run/x.pt"),
    (RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 5888 vs 5776"),
     "the disk is full: cannot write /ckpt"),
    (RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"), "the disk is full"),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/out"), "/mnt/ro/out is on a read-only filesystem"),
    (OSError(errno.ENAMETOOLONG, "File name too long", "/x/" + "a" * 300), "the path is too long"),
    (PermissionError(errno.EACCES, "Permission denied", "/root/x"), "permission denied: /root/x"),
])
def test_faults_are_named_with_their_path_and_fix(exc: BaseException, says: str) -> None:
    fault = os_error(exc, "/ckpt")
    assert fault is not None and says in fault.message and fault.hint


def test_other_errors_are_not_taken_for_faults() -> None:
    assert os_error(RuntimeError("CUDA error: device-side assert")) is None
    assert os_error(ValueError("x")) is None


def test_a_file_where_the_directory_should_be(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NovaError, match=r"afile is a file, not a directory"):
        check_writable_dir(tmp_path / "afile", "output_dir")
    with pytest.raises(NovaError, match=r"afile is a file, not a directory"):
        check_writable_dir(tmp_path / "afile" / "run", "output_dir")
    check_writable_dir(tmp_path / "new" / "run", "output_dir")  # missing directories are made later: fine
    assert not (tmp_path / "new").exists()  # and the check writes nothing


@pytest.mark.posix
def test_dev_null_as_logs_dir(tmp_path: Path) -> None:
    with pytest.raises(NovaError, match=r"logs_dir /dev/null: /dev/null is a device or special file"):
        check_writable_dir("/dev/null", "logs_dir")


def test_a_name_too_long(tmp_path: Path) -> None:
    with pytest.raises(NovaError, match=r"is 300 characters; a name may have at most 255 bytes"):
        check_writable_dir(tmp_path / ("a" * 300), "output_dir")


def test_a_read_only_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files.os, "access", lambda *a, **k: False)  # root may write anywhere: simulated
    monkeypatch.setattr(files, "_read_only", lambda p: True)
    with pytest.raises(NovaError, match=r"output_dir .*: .* is on a read-only filesystem"):
        check_writable_dir(tmp_path / "run", "output_dir")


def test_the_cli_prints_a_fault_as_one_line(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from nova.cli import main

    def full(**kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out/model.safetensors")

    monkeypatch.setattr(main, "app", full)
    monkeypatch.setattr(sys, "argv", ["nova", "merge"])
    with pytest.raises(SystemExit) as code:
        main.run()
    err = capsys.readouterr().err
    assert code.value.code != 0 and "internal error" not in err
    assert "the disk is full: cannot write /data/out/model.safetensors" in err and len(err.strip().splitlines()) == 1


def test_train_refuses_an_output_dir_that_is_a_file_before_any_work(tmp_path: Path, tiny_model_dir: Path) -> None:
    from conftest import ROOT
    from nova.config import load_yaml_config
    from nova.console import RunLog
    from nova.train.pipeline import run_config

    (tmp_path / "afile").write_text("mine")
    config = tmp_path / "c.yaml"
    config.write_text(f"""
name: p
model: {{base: {tiny_model_dir}, quantization: none}}
data: {{datasets: [{{path: {ROOT / "data" / "sora_en.jsonl"}, max_samples: 8}}], eval_split: 0.0, max_length: 64}}
training: {{max_steps: 1, micro_batch_size: 2, gradient_accumulation_steps: 1, learning_rate: 1.0e-4}}
output_dir: {tmp_path / "afile"}
logs_dir: /dev/null
""")
    with pytest.raises(NovaError, match="afile is a file, not a directory"):
        run_config(load_yaml_config(config), log=RunLog(tmp_path / "log.txt"))
    assert (tmp_path / "afile").read_text() == "mine"
