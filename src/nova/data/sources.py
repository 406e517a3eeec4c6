"""Read raw records from files, each with the place it came from (file:line or file[index]).

Reading is separate from validation so every record problem can name its exact location:
a JSONL line number, a JSON array index, a CSV row's line. Problems that make a whole file
unusable (empty, unreadable, not records, missing columns) raise ``FileProblem``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from nova.data.records import RecordProblem

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
BOM = b"\xef\xbb\xbf"
# Fields that hold structure; in CSV and Parquet cells they may be JSON-encoded.
_JSON_FIELDS = frozenset({"messages", "conversations", "chosen", "rejected", "prompt", "completion", "history",
                          "chosen_messages", "rejected_messages"})
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DIGITS = bytes(48 if 48 <= b <= 57 else 46 for b in range(256))  # bytes.translate: digit -> '0', else '.'
_LONG_RUN = b"0" * 19


class FileProblem(Exception):
    """A whole file (or directory) cannot be used."""

    def __init__(self, reason: str, where: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.where = where
        self.message = message
        self.hint = hint


@dataclass(frozen=True)
class RawRecord:
    """One record as read, or the problem that kept it from being read."""

    where: str
    data: dict[str, Any] | None
    problem: RecordProblem | None = None


def looks_like_hub_id(path: str) -> bool:
    """'owner/name' that is not a local path: a Hugging Face hub dataset id."""
    return bool(_HUB_ID.match(path)) and not Path(path).expanduser().exists() and \
        Path(path).suffix not in SUFFIXES


def list_files(path: Path) -> list[Path]:
    """The data files of a source: the file itself, or a directory's data files in sorted order."""
    if path.is_file():
        return [path]
    if not path.exists():
        raise FileProblem("unreadable", str(path), "no such file or directory")
    files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise FileProblem("empty_file", str(path), "the directory holds no .jsonl, .json, .csv or .parquet files")
    return files


def read_file(path: Path) -> tuple[list[str] | None, Iterator[RawRecord]]:
    """(column names for tabular files, else None; the records of one file)."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path)
    if suffix == ".parquet":
        return _read_parquet(path)
    data = _read_bytes(path)
    if suffix == ".json":
        return None, _read_json(path, data)
    return None, _read_jsonl(path, data)


def peek_record(path: Path) -> dict[str, Any] | None:
    """The fields of a file's first record as ``read_file`` reads them; None if it cannot be read.

    JSON Lines are read only up to the first non-blank line, so a caller that needs the shape
    of the data (preflight) answers at once on a file of any size; other formats are read whole.
    """
    if path.suffix.lower() != ".jsonl":
        raw = next(read_file(path)[1], None)
        return raw.data if raw else None
    with _open(path) as fh:
        lines = (line.removeprefix(BOM) if i == 0 else line for i, line in enumerate(fh))
        first = next((line for line in lines if line.strip()), None)
    raw = next(_read_jsonl(path, first), None) if first is not None else None
    return raw.data if raw else None


def count_records(path: Path) -> int:
    """How many records ``read_file`` yields for a file (good or bad), parsing as little as it can.

    Preflight counts records for the schedule check in well under a second: JSON Lines by their
    non-blank lines (no JSON parsed), Parquet from its footer; JSON and CSV are read whole.
    """
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with _open(path) as fh:
            head = fh.readline().removeprefix(BOM)
            return int(bool(head.strip())) + sum(1 for line in fh if line.strip())
    if suffix == ".parquet":
        from nova.lazy import require

        pq = require("pyarrow.parquet")
        try:
            return int(pq.ParquetFile(path).metadata.num_rows)
        except Exception as exc:  # pyarrow raises ArrowInvalid for corrupt files
            raise FileProblem("unreadable", str(path), f"not a readable Parquet file: {exc}") from None
    return sum(1 for _ in read_file(path)[1])


def _open(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except OSError as exc:
        raise FileProblem("unreadable", str(path), f"cannot read: {exc.strerror or exc}") from None


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FileProblem("unreadable", str(path), f"cannot read: {exc.strerror or exc}") from None
    data = data.removeprefix(BOM)  # a UTF-8 BOM (Windows editors) is harmless
    if not data.strip():
        raise FileProblem("empty_file", str(path), "the file is empty")
    return data


def _bad_utf8(exc: UnicodeDecodeError, line: bytes) -> RecordProblem:
    return RecordProblem("not_utf8", f"not UTF-8: byte 0x{line[exc.start]:02x} at column {exc.start + 1}",
                         "save the file as UTF-8")


def _long_number_lines(data: bytes) -> set[int]:
    """Line numbers (1-based) holding a run of 19 or more digits. orjson reads an integer beyond 64
    bits as a float where json keeps it exact, so those lines are parsed by json; a run inside a
    string is harmless (json gives the same result, only slower). One pass in C over the whole
    file: digits become '0', everything else '.', then a substring search."""
    digits = data.translate(_DIGITS)
    lines: set[int] = set()
    pos = digits.find(_LONG_RUN)
    while pos != -1:
        line = data.count(b"\n", 0, pos) + 1
        lines.add(line)
        end = data.find(b"\n", pos)
        if end == -1:
            break
        pos = digits.find(_LONG_RUN, end)
    return lines


def _read_jsonl(path: Path, data: bytes) -> Iterator[RawRecord]:
    lines = data.split(b"\n")
    last = len(lines) if lines[-1].strip() else len(lines) - 1
    exact = _long_number_lines(data)
    for number, raw in enumerate(lines, 1):
        where = f"{path}:{number}"
        if not raw.strip():
            continue
        if number not in exact:
            # The fast parser first; what it refuses (invalid JSON or UTF-8, a BOM, NaN, lone
            # surrogates) goes the exact way below, so problems and their messages are json's.
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError:
                pass
            else:
                yield _as_record(where, record)
                continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield RawRecord(where, None, _bad_utf8(exc, raw))
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            if number == last and not data.endswith(b"\n"):
                problem = RecordProblem("truncated_line", f"the last line is cut off ({exc.msg} at column "
                                        f"{exc.colno}, no newline at end of file)",
                                        "the file was probably not written completely")
            else:
                problem = RecordProblem("invalid_json", f"invalid JSON: {exc.msg} at column {exc.colno}")
            yield RawRecord(where, None, problem)
            continue
        yield _as_record(where, record)


def _as_record(where: str, record: Any) -> RawRecord:
    if isinstance(record, dict):
        return RawRecord(where, record)
    return RawRecord(where, None, RecordProblem("not_an_object", f"the record is a {type(record).__name__}, "
                                                "expected an object with fields"))


def _decode_utf8(path: Path, data: bytes) -> str:
    """The file's text, or a problem naming the line of the first byte that is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise FileProblem("not_utf8", f"{path}:{line}", f"not UTF-8: byte 0x{data[exc.start]:02x}",
                          "save the file as UTF-8") from None


def _read_json(path: Path, data: bytes) -> Iterator[RawRecord]:
    text = _decode_utf8(path, data)
    if not _long_number_lines(data):  # see _long_number_lines
        try:
            return _json_records(path, orjson.loads(data))
        except orjson.JSONDecodeError:
            pass  # json's reading below decides, with json's message
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # JSON Lines saved with a .json name
            return _read_jsonl(path, data)
        raise FileProblem("invalid_json", f"{path}:{exc.lineno}", f"invalid JSON: {exc.msg} at column {exc.colno}")\
            from None
    return _json_records(path, value)


def _json_records(path: Path, value: Any) -> Iterator[RawRecord]:
    """An array of records, an object of records keyed by id, or an object with one list of records."""
    if isinstance(value, list):
        return (_as_record(f"{path}[{i}]", r) for i, r in enumerate(value))
    if isinstance(value, dict):
        lists = [k for k, v in value.items() if isinstance(v, list) and v and isinstance(v[0], dict)]
        if value and all(isinstance(v, dict) for v in value.values()):
            return (RawRecord(f"{path}[{k!r}]", v) for k, v in value.items())
        if len(lists) == 1:
            key = lists[0]
            return (_as_record(f"{path}:{key}[{i}]", r) for i, r in enumerate(value[key]))
    raise FileProblem("not_records", str(path), "expected a JSON array of records or an object of records")


def _cell(name: str, value: Any) -> Any:
    if name in _JSON_FIELDS and isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _read_csv(path: Path) -> tuple[list[str], Iterator[RawRecord]]:
    data = _read_bytes(path)
    text = _decode_utf8(path, data)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = list(reader.fieldnames or [])

    def rows() -> Iterator[RawRecord]:
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row:
                yield RawRecord(where, None, RecordProblem("invalid_json", f"the row has {len(row[None])} more "
                                                           f"cells than the header's {len(header)} columns"))
                continue
            yield RawRecord(where, {k: _cell(k, v) for k, v in row.items() if v is not None})

    return header, rows()


def _read_parquet(path: Path) -> tuple[list[str], Iterator[RawRecord]]:
    from nova.lazy import require

    pq = require("pyarrow.parquet")
    try:
        table = pq.read_table(path)
    except OSError as exc:
        raise FileProblem("unreadable", str(path), f"cannot read: {exc}") from None
    except Exception as exc:  # pyarrow raises ArrowInvalid for corrupt files
        raise FileProblem("unreadable", str(path), f"not a readable Parquet file: {exc}") from None
    header = list(table.column_names)
    rows = table.to_pylist()
    return header, (RawRecord(f"{path}[{i}]", {k: _cell(k, v) for k, v in r.items()}) for i, r in enumerate(rows))


def hub_records(name: str) -> Iterator[RawRecord]:
    """Records of a hub dataset id, or a clear error when the hub cannot be reached (offline)."""
    offline = any(os.environ.get(k, "").lower() in ("1", "true", "yes")
                  for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    hint = "download it once and point path at the local .jsonl/.parquet file"
    if offline:
        raise FileProblem("unreadable", name, "no such local file or directory, and hub dataset ids cannot be "
                          "read offline (HF_HUB_OFFLINE is set)", hint)
    from nova.lazy import require

    datasets = require("datasets")
    try:
        ds = datasets.load_dataset(name, split="train")
    except Exception as exc:
        raise FileProblem("unreadable", name, f"cannot load hub dataset: {type(exc).__name__}: {exc}",
                          hint) from None
    return (_as_record(f"{name}[{i}]", r) for i, r in enumerate(ds))
