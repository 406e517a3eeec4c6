"""Reading (and trimming) the JSON files a run writes, while another process may be appending to them.

A reader can see a line that is still being written, or one torn by a kill or a full disk:
such lines are skipped and counted, never fatal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nova.files import write_text_atomic


def _parse(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def read_jsonl_counted(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Every JSON object in ``path`` and how many non-empty lines were not one (torn or foreign)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return [], 0
    out, bad = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        value = _parse(line)
        if value is None:
            bad += 1
        else:
            out.append(value)
    return out, bad


TAIL_BYTES = 4 * 1024 * 1024  # what nova status reads of metrics.jsonl: ~20,000 records, tens of milliseconds


def read_jsonl_tail(path: Path, max_bytes: int = TAIL_BYTES) -> tuple[list[dict[str, Any]], bool]:
    """The JSON objects in the last ``max_bytes`` of ``path`` (whole lines only), and whether earlier lines
    were left unread: a reader that needs the newest records never reads a file of any size whole."""
    try:
        with Path(path).open("rb") as fh:
            size = fh.seek(0, 2)
            start = max(0, size - max_bytes)
            fh.seek(start)
            data = fh.read(size - start)
    except OSError:
        return [], False
    if start > 0:
        data = data[data.find(b"\n") + 1:] if b"\n" in data else b""  # the first line is cut: dropped
    lines = data.decode("utf-8", errors="replace").splitlines()
    return [v for line in lines if line.strip() and (v := _parse(line)) is not None], start > 0


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every JSON object in ``path`` (missing file: none; a torn line: skipped)."""
    return read_jsonl_counted(path)[0]


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file, or None when it is missing, half-written or not an object."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one record as a line (a reader sees it whole or not at all once the line ends)."""
    with Path(path).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def number(value: Any) -> float | None:
    """A JSON number as float (bools and strings are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def trim_metrics(path: Path, stage: str, after_step: int) -> int:
    """Drop ``stage``'s records past ``after_step`` (they are logged again on resume); ``after_step``
    below 0 drops all of the stage's records. Torn lines are dropped too; returns how many."""
    records, torn = read_jsonl_counted(path)
    if not records and not torn:
        return 0

    def keep(r: dict[str, Any]) -> bool:
        if r.get("stage") != stage:
            return True
        step = r.get("step")
        return after_step >= 0 and isinstance(step, int) and step <= after_step

    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records if keep(r)))
    return torn
