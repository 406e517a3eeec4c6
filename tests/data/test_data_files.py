"""Every file of a data directory is accounted for: read (any case, .gz/.zst), or counted by why not."""

from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path

import pytest

from data_fixtures import chat, data_cfg
from nova.config.data_schema import DatasetSpec
from nova.data import check_data
from nova.data.cache import cache_key
from nova.errors import DataError


def _rows(n: int, start: int = 0) -> str:
    return "".join(json.dumps(chat(f"q{i}", f"a{i}")) + "\n" for i in range(start, start + n))


def _folder(root: Path) -> Path:
    """The issue's folder: 5 + 30 (upper-case suffix) + 40 (gzip) records, a .txt beside them."""
    (root / "sub").mkdir(parents=True)
    (root / "part0.jsonl").write_text(_rows(5), encoding="utf-8")
    (root / "sub" / "UPPER.JSONL").write_text(_rows(30, 100), encoding="utf-8")
    (root / "sub" / "more.jsonl.gz").write_bytes(gzip.compress(_rows(40, 200).encode()))
    (root / "sub" / "notes.txt").write_text("not data", encoding="utf-8")
    (root / "README.md").write_text("about the data", encoding="utf-8")
    (root / ".hidden.jsonl").write_text(_rows(1), encoding="utf-8")
    return root


def test_a_directory_with_a_file_nova_cannot_read_is_refused_naming_it(tmp_path: Path) -> None:
    data = _folder(tmp_path / "d")
    with pytest.raises(DataError) as info:
        check_data(data_cfg(data), method="sft")
    text = info.value.lines()[0]
    assert "sub/notes.txt" in text and "ignore: ['*.txt']" in text and "3 of 6 files read" in text


def test_ignored_files_are_counted_and_every_readable_file_is_read(tmp_path: Path) -> None:
    data = _folder(tmp_path / "d")
    report = check_data(data_cfg(DatasetSpec(path=str(data), ignore=["*.TXT"])), method="sft")
    assert report.read == 75 and report.kept == 75  # 5 + 30 (UPPER.JSONL) + 40 (.jsonl.gz)
    source = report.sources[0]
    assert source.files_line() == "3 of 6 files read; not read: 1 .md, 1 hidden, 1 ignored"
    assert report.to_dict()["skipped_files"] == {"not read: .md": 1, "not read: hidden": 1, "not read: ignored": 1}
    assert any(line.strip() == f"files: {source.files_line()}" for line in report.lines())


def test_the_ignore_globs_are_part_of_the_data_fingerprint(tmp_path: Path) -> None:
    data = _folder(tmp_path / "d")
    keys = {cache_key(data_cfg(DatasetSpec(path=str(data), ignore=globs)), method="sft", seed=1,
                      dpo_lengths=(1, 1), tokenizer_id="t") for globs in (["*.txt"], ["*.txt", "*.md"])}
    assert len(keys) == 2


def test_compressed_json_and_csv_are_streamed(tmp_path: Path) -> None:
    (tmp_path / "a.json.gz").write_bytes(gzip.compress(json.dumps([chat("x", "y"), chat("z", "w")]).encode()))
    (tmp_path / "b.CSV.gz").write_bytes(gzip.compress(b"prompt,completion\nhi,there\n"))
    report = check_data(data_cfg(tmp_path), method="sft")
    assert report.kept == 3


def test_zstd_jsonl_is_read(tmp_path: Path) -> None:
    zstandard = pytest.importorskip("zstandard")
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(_rows(4).encode()))
    assert check_data(data_cfg(tmp_path / "c.jsonl.zst"), method="sft").kept == 4


def test_a_damaged_gzip_file_is_one_problem_for_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(gzip.compress(_rows(50).encode())[:-30])
    with pytest.raises(DataError) as info:
        check_data(data_cfg(path), method="sft")
    assert f"{path}: cannot decompress .gz file" in info.value.lines()[0]


@pytest.mark.skipif(sys.platform == "win32", reason="FIFOs and /dev/zero are POSIX")
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_fifo_or_device_as_data_is_one_clear_line(tmp_path: Path, kind: str) -> None:
    path = Path("/dev/zero")
    if kind == "fifo":
        path = tmp_path / "pipe"
        os.mkfifo(path)
    with pytest.raises(DataError) as info:
        check_data(data_cfg(path), method="sft")
    lines = info.value.lines()
    assert len(lines) == 1 and "not a regular file or a directory (a FIFO, socket or device)" in lines[0]
    assert "holds no" not in lines[0]
