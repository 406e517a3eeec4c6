"""Read raw records from files, each with the place it came from (file:line or file[index]).

Reading is separate from validation so every record problem can name its exact location:
a JSONL line number, a JSON array index, a CSV row's line. Problems that make a whole file
unusable (empty, unreadable, not records, missing columns) raise ``FileProblem``.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from nova.data.listing import FileProblem, compression, data_suffix, decompress_errors, list_files, listing, open_stream
from nova.data.parquet import open_parquet
from nova.data.records import RecordProblem
from nova.files import looks_like_local_path

BOM = b"\xef\xbb\xbf"
MiB = 1024 * 1024
BLOCK = MiB  # JSON Lines are parsed a block at a time: memory near one block, not 2-3x the file
MAX_LINE = 64 * MiB  # one record; a longer line is reported (and skipped) instead of filling memory
MAX_DECOMPRESSED = 2048 * MiB  # a compressed JSON file is parsed whole: a file inflating past this is refused
# Fields that hold structure; in CSV and Parquet cells they may be JSON-encoded.
_JSON_FIELDS = frozenset({"messages", "conversations", "chosen", "rejected", "prompt", "completion", "history",
                          "chosen_messages", "rejected_messages"})
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DIGITS = bytes(48 if 48 <= b <= 57 else 46 for b in range(256))  # bytes.translate: digit -> '0', else '.'
_LONG_RUN = b"0" * 19
__all__ = ["FileProblem", "RawRecord", "count_records", "hub_records", "list_files", "listing", "looks_like_hub_id",
           "peek_record", "read_file"]


@dataclass(frozen=True)
class RawRecord:
    """One record as read, or the problem that kept it from being read."""

    where: str
    data: dict[str, Any] | None
    problem: RecordProblem | None = None


def looks_like_hub_id(path: str) -> bool:
    """'owner/name' that is not a local path: a Hugging Face hub dataset id."""
    return bool(_HUB_ID.match(path)) and not Path(path).expanduser().exists() and \
        data_suffix(Path(path)) is None and not looks_like_local_path(path)


def read_file(path: Path) -> tuple[list[str] | None, Iterator[RawRecord]]:
    """(column names for tabular files, else None; the records of one file)."""
    suffix = data_suffix(path)
    if suffix == ".csv":
        return _read_csv(path)
    if suffix == ".parquet":
        return _read_parquet(path)
    if suffix == ".json":
        return None, _read_json(path, _read_bytes(path))
    return None, _read_jsonl_file(path, _open(path))


def peek_record(path: Path) -> dict[str, Any] | None:
    """The fields of a file's first record as ``read_file`` reads them; None if it cannot be read.

    JSON Lines are read only up to the first block holding a non-blank line, so a caller that needs
    the shape of the data (preflight) answers at once on a file of any size; other formats are read
    until their first record.
    """
    if data_suffix(path) != ".jsonl":
        raw = next(read_file(path)[1], None)
        return raw.data if raw else None
    records = _read_jsonl_file(path, _open(path))
    try:
        raw = next(records, None)
    except FileProblem:  # an empty file has no first record
        return None
    finally:
        records.close()
    return raw.data if raw else None


def count_records(path: Path) -> int:
    """How many records ``read_file`` yields for a file (good or bad), parsing as little as it can.

    Preflight counts records for the schedule check in well under a second: JSON Lines by their
    non-blank lines (no JSON parsed), Parquet from its footer; JSON is read whole, CSV row by row.
    """
    suffix = data_suffix(path)
    if suffix == ".jsonl":
        with _open(path) as fh:  # by blocks: a file of one endless line is never read whole
            return sum(1 if block is None else sum(1 for line in block.split(b"\n") if line.strip())
                       for block in _line_blocks(fh, path))
    if suffix == ".parquet":
        from nova.lazy import require

        pq = require("pyarrow.parquet")
        try:
            return int(pq.ParquetFile(path).metadata.num_rows)
        except Exception as exc:  # pyarrow raises ArrowInvalid for corrupt files
            raise FileProblem("unreadable", str(path), f"not a readable Parquet file: {exc}") from None
    return sum(1 for _ in read_file(path)[1])


def _open(path: Path) -> BinaryIO:
    """The file's bytes, decompressed as they are read when it is ``.gz`` or ``.zst``."""
    try:
        return open_stream(path, path.open("rb"))  # type: ignore[no-any-return]
    except OSError as exc:
        raise FileProblem("unreadable", str(path), f"cannot read: {exc.strerror or exc}") from None


def _damaged(path: Path, exc: BaseException) -> FileProblem:
    """A compressed file that cannot be decompressed (cut off, not gzip/zstd after all)."""
    return FileProblem("unreadable", str(path), f"cannot decompress {compression(path)} file: "
                       f"{type(exc).__name__}: {exc}", "check the file; recompress it or use it uncompressed")


def _read(path: Path, fh: BinaryIO, size: int) -> bytes:
    """``fh.read(size)``, a damaged compressed stream as a FileProblem for the file."""
    try:
        return fh.read(size)
    except (*decompress_errors(), OSError) as exc:
        raise _damaged(path, exc) from None


def _read_bytes(path: Path) -> bytes:
    """A whole file, for the formats that are parsed whole (a JSON array); JSON Lines and CSV stream."""
    try:
        if compression(path) is None:
            data = path.read_bytes()
        else:
            with _open(path) as fh:
                data = _read(path, fh, MAX_DECOMPRESSED + 1)
            if len(data) > MAX_DECOMPRESSED:
                raise FileProblem("too_complex", str(path), f"decompresses to more than {MAX_DECOMPRESSED // MiB} MiB "
                                  "of JSON, which is parsed whole", "use JSON Lines (.jsonl.gz), which is streamed")
    except OSError as exc:
        raise FileProblem("unreadable", str(path), f"cannot read: {exc.strerror or exc}") from None
    data = data.removeprefix(BOM)  # a UTF-8 BOM (Windows editors) is harmless
    if not data.strip():
        raise FileProblem("empty_file", str(path), "the file is empty")
    return data


def _line_blocks(fh: BinaryIO, path: Path | None = None) -> Iterator[bytes | None]:
    """The file in blocks of whole lines (every block but the last ends with a newline), a BOM at the
    start dropped; None in place of one line longer than MAX_LINE (skipped up to its newline), so
    memory stays near one block however large the file, and line numbers stay countable."""
    pending, skipping, first = b"", False, True
    while True:
        chunk = _read(path or Path("?"), fh, max(BLOCK, len(BOM)) if first else BLOCK)
        eof = not chunk
        if first:
            chunk, first = chunk.removeprefix(BOM), False
        if skipping:
            if eof:
                return
            end = chunk.find(b"\n")
            if end == -1:
                continue
            skipping, chunk = False, chunk[end + 1:]
        if eof:
            if pending:
                yield pending
            return
        cut = chunk.rfind(b"\n")
        if cut == -1:
            pending += chunk
            if len(pending) > MAX_LINE:
                yield None
                pending, skipping = b"", True
            continue
        yield pending + chunk[: cut + 1]
        pending = chunk[cut + 1:]


def _read_jsonl_file(path: Path, fh: BinaryIO) -> Iterator[RawRecord]:
    """The records of a JSON Lines file, read a block at a time (the file is never in memory whole)."""
    number, seen = 1, False
    with fh:
        for block in _line_blocks(fh, path):
            if block is None:
                seen = True
                yield RawRecord(f"{path}:{number}", None, RecordProblem(
                    "too_complex", f"the line is longer than {MAX_LINE // MiB} MiB", "split the record"))
                number += 1
                continue
            for raw in _read_jsonl(path, block, number):
                seen = True
                yield raw
            number += block.count(b"\n")
    if not seen:
        raise FileProblem("empty_file", str(path), "the file is empty")


def _bad_utf8(exc: UnicodeDecodeError, line: bytes) -> RecordProblem:
    return RecordProblem("not_utf8", f"not UTF-8: byte 0x{line[exc.start]:02x} at column {exc.start + 1}",
                         "save the file as UTF-8")


def _long_number_lines(data: bytes) -> set[int]:
    """Line numbers (1-based) holding a run of 19 or more digits. orjson reads an integer beyond 64
    bits as a float where json keeps it exact, so those lines are parsed by json; a run inside a
    string is harmless (json gives the same result, only slower). One pass in C over the block:
    digits become '0', everything else '.', then a substring search."""
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


def _read_jsonl(path: Path, data: bytes, first: int = 1) -> Iterator[RawRecord]:
    """The records of ``data``, whole lines of a JSON Lines file whose first is line ``first``; a last
    line without a newline is the end of the file (``_line_blocks`` ends every other block at one)."""
    lines = data.split(b"\n")
    cut_off = not data.endswith(b"\n")
    exact = _long_number_lines(data)
    prefix = f"{path}:"
    for index, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        where = f"{prefix}{first + index - 1}"
        if index not in exact:
            # The fast parser first; what it refuses (invalid JSON or UTF-8, a BOM, NaN, lone
            # surrogates, deep nesting) goes the exact way below, so problems and messages are json's.
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError:
                pass
            else:
                yield _as_record(where, record)
                continue
        yield _exact_record(where, raw, cut_off and index == len(lines))


def _exact_record(where: str, raw: bytes, last_cut_off: bool) -> RawRecord:
    """One line parsed by json (exact integers, json's messages), or the problem that stops it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return RawRecord(where, None, _bad_utf8(exc, raw))
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        if last_cut_off:
            problem = RecordProblem("truncated_line", f"the last line is cut off ({exc.msg} at column "
                                    f"{exc.colno}, no newline at end of file)",
                                    "the file was probably not written completely")
        else:
            problem = RecordProblem("invalid_json", f"invalid JSON: {exc.msg} at column {exc.colno}")
        return RawRecord(where, None, problem)
    except (ValueError, RecursionError) as exc:
        return RawRecord(where, None, too_complex(exc))
    return _as_record(where, record)


def too_complex(exc: ValueError | RecursionError) -> RecordProblem:
    """A JSON value Python will not build: nested deeper than its recursion limit, or an integer
    longer than its int-string limit (``sys.get_int_max_str_digits``, 4300 digits by default)."""
    if isinstance(exc, RecursionError):
        return RecordProblem("too_complex", "the record is nested too deeply to read",
                             "flatten the record; no chat needs hundreds of levels")
    return RecordProblem("too_complex", f"a number longer than {sys.get_int_max_str_digits()} digits",
                         "write it as a string")


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
    """A JSON file is one value: parsed whole (JSON Lines is the format for data too big for memory)."""
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
    except (ValueError, RecursionError) as exc:  # one array: no record to blame, the file is the problem
        problem = too_complex(exc)
        raise FileProblem(problem.reason, str(path), problem.message, problem.hint) from None
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
        except (ValueError, RecursionError):  # not JSON after all (or too deep, too long): the text as is
            return value
    return value


def _check_text(path: Path) -> None:
    """Refuse a file that is empty or not UTF-8 (naming the line), one block at a time, before any
    row is read: a CSV with a bad byte is one problem for the file, never half its rows."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with _open(path) as fh:
        block = _read(path, fh, max(BLOCK, len(BOM)))
        content = bool(block.removeprefix(BOM).strip())
        while block:
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                at = exc.start - len(exc.object) + len(block)  # the decoder prepends a split character
                line += block.count(b"\n", 0, max(at, 0))
                raise FileProblem("not_utf8", f"{path}:{line}", f"not UTF-8: byte 0x{exc.object[exc.start]:02x}",
                                  "save the file as UTF-8") from None
            line += block.count(b"\n")
            block = _read(path, fh, BLOCK)
            content = content or bool(block.strip())
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise FileProblem("not_utf8", f"{path}:{line}", "not UTF-8: the file ends inside a character",
                              "save the file as UTF-8") from None
    if not content:
        raise FileProblem("empty_file", str(path), "the file is empty")


def _read_csv(path: Path) -> tuple[list[str], Iterator[RawRecord]]:
    """Rows streamed through the csv module from the open file (line numbers from the reader)."""
    _check_text(path)
    fh = io.TextIOWrapper(_open(path), encoding="utf-8-sig", newline="")  # utf-8-sig: a BOM is dropped
    csv.field_size_limit(MAX_LINE)  # the default (128 KiB) refuses a long text cell
    reader = csv.DictReader(fh)
    try:
        header = list(reader.fieldnames or [])
    except csv.Error as exc:
        fh.close()
        raise FileProblem("unreadable", f"{path}:{reader.line_num}", f"not valid CSV: {exc}") from None

    def rows() -> Iterator[RawRecord]:
        with fh:
            try:
                for row in reader:
                    where = f"{path}:{reader.line_num}"
                    if None in row:
                        yield RawRecord(where, None, RecordProblem(
                            "invalid_json", f"the row has {len(row[None])} more cells than the header's "
                            f"{len(header)} columns"))
                        continue
                    yield RawRecord(where, {k: _cell(k, v) for k, v in row.items() if v is not None})
            except csv.Error as exc:
                raise FileProblem("unreadable", f"{path}:{reader.line_num}", f"not valid CSV: {exc}") from None
            except decompress_errors() as exc:  # checked whole by _check_text; a file changed since
                raise _damaged(path, exc) from None

    return header, rows()


def _read_parquet(path: Path) -> tuple[list[str], Iterator[RawRecord]]:
    """Rows a record batch at a time, every row's text measured before it is read (nova.data.parquet)."""
    header, rows = open_parquet(path)
    return header, (RawRecord(where, None if data is None else {k: _cell(k, v) for k, v in data.items()}, problem)
                    for where, data, problem in rows)


def hub_dataset_hint(name: str) -> str:
    """How to make a hub dataset local: the download command of the client installed here, and the path to give."""
    from nova.system import hub_client

    local = f"data/{name.rsplit('/', 1)[-1]}"
    return (f"download it once: {hub_client()} download {name} --repo-type dataset --local-dir {local}; "
            f"then set path: {local}")


def hub_records(name: str) -> Iterator[RawRecord]:
    """Records of a hub dataset id, or a clear error when the hub cannot be reached (offline)."""
    offline = any(os.environ.get(k, "").lower() in ("1", "true", "yes")
                  for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    hint = hub_dataset_hint(name)
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
