"""Check a GGUF file's structure before any reader trusts it: every count against the bytes left.

A GGUF header says how many metadata entries and tensors follow, and every string and array
carries its own length. A 98-byte file can claim an array of 2**62 items; a reader that
allocates by the claim (``gguf.GGUFReader`` appends one entry per claimed item) runs out of
memory before it sees the file is short. This walk reads lengths only, checks each one against
what the file can still hold, and stops at the first lie: bounded time (at most one step per 8
bytes of metadata) and no allocation by a claimed size. It also checks what the readers assume
and report badly: the tensor table (known types, data inside the file and aligned), unique keys
and tensor names, and ``general.alignment``.

Spec: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md. Versions 2 and 3 share one
layout (64-bit counts and lengths), in little- or big-endian byte order (v3); version 1 (32-bit
counts, 2023) is not read by ``gguf.GGUFReader`` and so not here either.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

from nova.errors import NovaError
from nova.lazy import require

# gguf_type -> size in bytes: 0 uint8, 1 int8, 2 uint16, 3 int16, 4 uint32, 5 int32, 6 float32,
# 7 bool, 10 uint64, 11 int64, 12 float64 (8 = string and 9 = array carry their own lengths)
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
MAX_DIMS = 8  # ggml tensors have at most 4 dimensions today; the spec allows for more later
MAX_NESTING = 8  # arrays of arrays
MAX_KEY = 65_535  # the spec's limit on a key's length
DEFAULT_ALIGNMENT = 32


class _Reader:
    def __init__(self, fh: BinaryIO, size: int, path: Path) -> None:
        self.fh, self.size, self.path, self.order = fh, size, path, "<"

    @property
    def left(self) -> int:
        return self.size - self.fh.tell()

    def fail(self, what: str) -> NovaError:
        return NovaError(f"{self.path} is not a valid GGUF file: {what} (at byte {self.fh.tell()})",
                         hint="the file is truncated or corrupt; download or convert it again")

    def take(self, fmt: str) -> int:
        n = struct.calcsize(fmt)
        if n > self.left:
            raise self.fail("the file ends inside the header")
        return int(struct.unpack(self.order + fmt, self.fh.read(n))[0])

    def skip(self, n: int, what: str) -> None:
        if n < 0 or n > self.left:
            raise self.fail(f"{what} claims {n} bytes but only {self.left} are left")
        self.fh.seek(n, 1)

    def string(self, what: str, limit: int | None = None) -> bytes:
        """Read a string that is kept (a key, a tensor name): its length is checked before reading."""
        n = self.take("Q")
        if limit is not None and n > limit:
            raise self.fail(f"{what} of {n} bytes (at most {limit})")
        if n > self.left:
            raise self.fail(f"{what} claims {n} bytes but only {self.left} are left")
        return self.fh.read(n)

    def value(self, kind: int, depth: int = 0) -> None:
        if kind in _FIXED:
            self.skip(_FIXED[kind], "a value")
        elif kind == _STRING:
            self.skip(self.take("Q"), "a string value")
        elif kind == _ARRAY:
            self.array(depth)
        else:
            raise self.fail(f"unknown value type {kind}")

    def array(self, depth: int) -> None:
        if depth >= MAX_NESTING:
            raise self.fail("arrays nested too deeply")
        kind, count = self.take("I"), self.take("Q")
        if kind in _FIXED:
            self.skip(count * _FIXED[kind], f"an array of {count} items")
            return
        smallest = 8 if kind == _STRING else 12  # a string length, or an array's type + count
        if count * smallest > self.left:
            raise self.fail(f"an array claims {count} items but only {self.left} bytes are left")
        for _ in range(count):
            self.value(kind, depth + 1)


def _header(r: _Reader) -> tuple[int, int]:
    """Magic, version (which also tells the byte order), counts: (tensors, metadata entries)."""
    if r.fh.read(4) != b"GGUF":
        raise r.fail("no GGUF magic")
    raw = r.fh.read(4)
    if len(raw) < 4:
        raise r.fail("the file ends inside the header")
    version = struct.unpack("<I", raw)[0]
    if version & 0xFFFF == 0:  # written on a big-endian machine (as gguf.GGUFReader detects it)
        r.order, version = ">", struct.unpack(">I", raw)[0]
    if version not in (2, 3):
        raise r.fail(f"unsupported GGUF version {version} (nova reads versions 2 and 3; convert the model "
                     "again with a current llama.cpp)")
    tensors, entries = r.take("Q"), r.take("Q")
    if entries * 13 + tensors * 24 > r.left:  # the smallest entry (key length, type, one byte) and tensor record
        raise r.fail(f"the header claims {entries} metadata entries and {tensors} tensors, more than "
                     f"{r.left} bytes can hold")
    return tensors, entries


def _metadata(r: _Reader, entries: int) -> int:
    """Walk the key/value pairs; returns ``general.alignment`` (the default when absent)."""
    alignment, keys = DEFAULT_ALIGNMENT, set()
    for _ in range(entries):
        key = r.string("a metadata key", MAX_KEY)
        if key in keys:
            raise r.fail(f"the metadata key {key[:80]!r} appears twice")
        keys.add(key)
        kind = r.take("I")
        if key == b"general.alignment":
            if kind != _UINT32:
                raise r.fail("general.alignment is not a uint32")
            alignment = r.take("I")
            if alignment == 0 or alignment & (alignment - 1):
                raise r.fail(f"general.alignment is {alignment}, not a power of two")
        else:
            r.value(kind)
    return alignment


def _tensor_table(r: _Reader, tensors: int) -> list[tuple[bytes, int, int, int]]:
    """(name, ggml type, element count, offset) of every tensor, each record checked against the file."""
    table, names = [], set()
    for _ in range(tensors):
        name = r.string("a tensor name", MAX_KEY)
        if name in names:
            raise r.fail(f"the tensor name {name[:80]!r} appears twice")
        names.add(name)
        dims = r.take("I")
        if dims > MAX_DIMS:
            raise r.fail(f"a tensor with {dims} dimensions")
        shape = [r.take("Q") for _ in range(dims)]
        count = 1
        for d in shape:
            count *= d
        kind, offset = r.take("I"), r.take("Q")
        table.append((name, kind, count, offset))
    return table


def _check_tensor_data(r: _Reader, table: list[tuple[bytes, int, int, int]], alignment: int) -> None:
    """Each tensor's bytes lie inside the file, after the aligned start of the data section."""
    constants = require("gguf.constants")
    start = -(-r.fh.tell() // alignment) * alignment
    for name, kind, count, offset in table:
        try:
            block, type_size = constants.GGML_QUANT_SIZES[constants.GGMLQuantizationType(kind)]
        except (ValueError, KeyError):
            raise r.fail(f"tensor {name[:80]!r} has unknown type {kind}") from None
        if offset % alignment:
            raise r.fail(f"tensor {name[:80]!r} starts at offset {offset}, not a multiple of {alignment}")
        if count % block:
            raise r.fail(f"tensor {name[:80]!r} has {count} values, not whole blocks of {block}")
        end = start + offset + count // block * type_size
        if end > r.size:
            raise r.fail(f"tensor {name[:80]!r} ends at byte {end}, but the file has {r.size} bytes")


def check_gguf_structure(path: Path) -> None:
    """Raise a NovaError unless every length in the header, metadata and tensor table fits the file."""
    size = path.stat().st_size
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise NovaError(f"cannot read {path}: {exc.strerror or exc}") from None
    with fh:
        r = _Reader(fh, size, path)
        tensors, entries = _header(r)
        alignment = _metadata(r, entries)
        _check_tensor_data(r, _tensor_table(r, tensors), alignment)
