"""JSON Lines, CSV and Parquet are read a block at a time, with the same records, places and problems
as a whole-file read, and memory near one block whatever the file's size."""

from __future__ import annotations

import json
import random
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from data_fixtures import chat
from nova.data import sources
from nova.data.sources import FileProblem, count_records, peek_record, read_file

GOOD = json.dumps(chat("hi", "hello"))


def _seen(path: Path) -> list[tuple[str, Any, str | None]]:
    return [(r.where, r.data, r.problem.reason if r.problem else None) for r in read_file(path)[1]]


def _messy_jsonl(rng: random.Random) -> bytes:
    """Good and bad lines of every kind the reader treats differently, in random order."""
    kinds = [GOOD.encode(), b"", b"   ", b"{oops", b'{"text": "caf\xe9"}', b"[1, 2]", b'{"text": "x", "n": ' +
             b"1" * 25 + b"}", b'{"text": "' + "\u00e9".encode() * 40 + b'"}', b"[" * 3000 + b"]" * 3000,
             b'{"text": ' + b"7" * 5000 + b"}", b'{"text": "a\\u0000b"}']
    lines = [rng.choice(kinds) for _ in range(rng.randint(1, 60))]
    data = b"\n".join(lines)
    if rng.random() < 0.5:
        data += b"\n"
    else:
        data += b"\n" + GOOD[: rng.randint(1, 20)].encode()  # a last line that is cut off
    return (sources.BOM if rng.random() < 0.3 else b"") + data


@pytest.mark.parametrize("block", [1, 7, 64, 1000])
def test_any_block_size_reads_what_one_whole_block_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         block: int) -> None:
    rng = random.Random(block)
    for case in range(25):
        path = tmp_path / f"m{case}.jsonl"
        path.write_bytes(_messy_jsonl(rng))
        monkeypatch.setattr(sources, "BLOCK", 1 << 30)
        try:
            whole = _seen(path)
        except FileProblem as exc:
            whole = [("FileProblem", exc.message, exc.reason)]
        monkeypatch.setattr(sources, "BLOCK", block)
        try:
            streamed = _seen(path)
        except FileProblem as exc:
            streamed = [("FileProblem", exc.message, exc.reason)]
        assert streamed == whole, path.read_bytes()[:200]
        if streamed[0][0] != "FileProblem":
            assert count_records(path) == len(streamed)
            assert peek_record(path) == streamed[0][1]


def test_line_numbers_problems_and_the_cut_off_last_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "BLOCK", 16)
    path = tmp_path / "d.jsonl"
    path.write_bytes(sources.BOM + f"{GOOD}\n\n{{oops\n{GOOD}\n{GOOD[:10]}".encode())
    assert [(w.rsplit(":", 1)[1], p) for w, _, p in _seen(path)] == [
        ("1", None), ("3", "invalid_json"), ("4", None), ("5", "truncated_line")]


def test_a_line_longer_than_the_limit_is_one_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "BLOCK", 64)
    monkeypatch.setattr(sources, "MAX_LINE", 1000)
    path = tmp_path / "long.jsonl"
    path.write_text(f"{GOOD}\n" + json.dumps(chat("x" * 5000, "y")) + f"\n{GOOD}\n")
    seen = _seen(path)
    assert [(w.rsplit(":", 1)[1], p) for w, _, p in seen] == [("1", None), ("2", "too_complex"), ("3", None)]
    assert next(r for r in read_file(path)[1] if r.problem).problem.message == "the line is longer than 0 MiB"  # type: ignore[union-attr]
    assert count_records(path) == 3
    endless = tmp_path / "endless.jsonl"
    endless.write_text("x" * 5000)
    assert count_records(endless) == 1 and peek_record(endless) is None


def test_empty_jsonl_is_a_file_problem(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_bytes(sources.BOM + b"\n  \n")
    with pytest.raises(FileProblem, match="the file is empty"):
        list(read_file(path)[1])


def test_reading_a_large_jsonl_keeps_memory_near_one_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "BLOCK", 256 * 1024)
    path = tmp_path / "big.jsonl"
    line = (GOOD + "\n").encode()
    path.write_bytes(line * (12 * sources.MiB // len(line)))  # 12 MiB; read whole it would take 2-3x that
    tracemalloc.start()
    try:
        count = sum(1 for _ in read_file(path)[1])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count > 100_000
    assert peak < 4 * sources.MiB, f"peak {peak / sources.MiB:.1f} MiB for a 12 MiB file"


def test_csv_streams_with_exact_line_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "BLOCK", 8)
    path = tmp_path / "d.csv"
    long_cell = "z" * 200_000  # over the csv module's default field limit (128 KiB)
    path.write_bytes(sources.BOM + f'prompt,completion\nq1,a1\n"multi\nline",a2\nq3,{long_cell}\nq4,a4,extra\n'
                     .encode())
    header, records = read_file(path)
    seen = [(r.where.rsplit(":", 1)[1], r.data, r.problem.reason if r.problem else None) for r in records]
    assert header == ["prompt", "completion"]
    assert seen == [("2", {"prompt": "q1", "completion": "a1"}, None),
                    ("4", {"prompt": "multi\nline", "completion": "a2"}, None),
                    ("5", {"prompt": "q3", "completion": long_cell}, None),
                    ("6", None, "invalid_json")]


def test_csv_that_is_not_utf8_is_refused_before_any_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "BLOCK", 5)
    path = tmp_path / "bad.csv"
    path.write_bytes("prompt,completion\nq1,a1\nq2,caf\u00e9\n".encode() + b"q3,caf\xe9\n")
    with pytest.raises(FileProblem) as err:
        read_file(path)
    assert (err.value.where, err.value.message) == (f"{path}:4", "not UTF-8: byte 0xe9")
    empty = tmp_path / "empty.csv"
    empty.write_bytes(sources.BOM + b"\n")
    with pytest.raises(FileProblem, match="the file is empty"):
        read_file(empty)


def test_parquet_is_read_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nova.data import parquet

    monkeypatch.setattr(parquet, "PARQUET_BATCH", 3)
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": [f"q{i}" for i in range(10)], "completion": ["a"] * 10}), path)
    header, records = read_file(path)
    rows = list(records)
    assert header == ["prompt", "completion"] and len(rows) == 10
    assert rows[7].where == f"{path}[7]" and rows[7].data == {"prompt": "q7", "completion": "a"}


def test_a_parquet_file_that_inflates_without_bound_is_refused_before_it_is_read(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "bomb.parquet"  # a few hundred bytes holding 4,600 copies of a 1 MiB text: 4.8 GB read
    cells = pa.DictionaryArray.from_arrays(pa.array([0] * 4600, pa.int32()), pa.array(["a" * 2**20]))
    pq.write_table(pa.table({"text": cells}), path, compression="zstd")
    assert path.stat().st_size < 4096
    with pytest.raises(FileProblem) as err:
        list(read_file(path)[1])
    assert err.value.message.startswith("its text inflates to more than 1024 MiB (1000x the file's size)")


def test_a_parquet_cell_is_bounded_like_a_jsonl_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nova.data import parquet

    monkeypatch.setattr(parquet, "MAX_CELL", 1000)
    path = tmp_path / "long.parquet"
    pq.write_table(pa.table({"text": ["short", "x" * 5000, "fine"]}), path)
    rows = list(read_file(path)[1])
    assert [r.data for r in rows] == [{"text": "short"}, None, {"text": "fine"}]
    assert rows[1].where == f"{path}[1]" and rows[1].problem is not None
    assert rows[1].problem.reason == "too_complex" and "more than 0 MiB" in rows[1].problem.message
