"""The GGUF structure walk: every count checked against the file before a reader allocates by it."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from nova.errors import NovaError
from nova.model.gguf import check_gguf_file
from nova.model.gguf_check import check_gguf_structure

SMOLLM2_GGUF = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _kv_header(entries: int, tensors: int = 0, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, tensors, entries)


def _key(name: str) -> bytes:
    return struct.pack("<Q", len(name)) + name.encode()


def _write(tmp_path: Path, data: bytes, name: str = "x.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _writer_file(path: Path, *, big_endian: bool = False, alignment: int | None = None) -> Path:
    import gguf

    endian = gguf.GGUFEndian.BIG if big_endian else gguf.GGUFEndian.LITTLE
    writer = gguf.GGUFWriter(str(path), "llama", endianess=endian)
    if alignment is not None:
        writer.add_uint32("general.alignment", alignment)
    writer.add_array("tokenizer.ggml.tokens", ["a", "bb", "ccc"])
    writer.add_array("tokenizer.ggml.scores", [0.0, 1.0, 2.0])
    writer.add_string("tokenizer.chat_template", "{{ messages }}")
    weight = np.arange(32, dtype=np.float32).reshape(4, 8)
    writer.add_tensor("w", weight.byteswap() if big_endian else weight)
    writer.add_tensor("b", np.ones(3, dtype=np.float16).byteswap() if big_endian else np.ones(3, dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(("big_endian", "alignment"), [(False, None), (False, 64), (True, None)],
                         ids=["little", "aligned-64", "big-endian"])
def test_files_written_by_gguf_writer_pass(tmp_path: Path, big_endian: bool, alignment: int | None) -> None:
    import gguf

    path = _writer_file(tmp_path / "ok.gguf", big_endian=big_endian, alignment=alignment)
    check_gguf_structure(path)
    assert check_gguf_file(path) == path
    assert len(gguf.GGUFReader(str(path)).tensors) == 2  # and the reader agrees it is fine


def test_the_real_smollm2_file_passes_quickly() -> None:
    if not SMOLLM2_GGUF.exists():
        pytest.fail(f"{SMOLLM2_GGUF} not found: run 'bash scripts/setup.sh' first")
    start = time.monotonic()
    check_gguf_structure(SMOLLM2_GGUF)
    assert time.monotonic() - start < 5


def test_array_bomb_is_refused(tmp_path: Path) -> None:
    bomb = _kv_header(1) + _key("a") + struct.pack("<IIQ", 9, 8, 2**62)  # an array of 2**62 strings
    path = _write(tmp_path, bomb + b"\0" * (98 - len(bomb)))
    with pytest.raises(NovaError, match=f"an array claims {2**62} items but only 49 bytes are left"):
        check_gguf_file(path)


@pytest.mark.parametrize(("body", "message"), [
    (_kv_header(2**40), "claims 1099511627776 metadata entries"),
    (_kv_header(1) + struct.pack("<Q", 2**60), "a metadata key of 1152921504606846976 bytes"),
    (_kv_header(1) + _key("a") + struct.pack("<I", 8) + struct.pack("<Q", 2**50), "a string value claims"),
    (_kv_header(1) + _key("a") + struct.pack("<IIQ", 9, 10, 2**61), "an array of 2305843009213693952 items"),
    (_kv_header(1) + _key("a") + struct.pack("<I", 13), "unknown value type 13"),
    (_kv_header(2) + (_key("a") + struct.pack("<IB", 0, 1)) * 2, "the metadata key b'a' appears twice"),
    (_kv_header(1) + _key("general.alignment") + struct.pack("<II", 4, 48), "not a power of two"),
    (_kv_header(1) + _key("general.alignment") + struct.pack("<IQ", 10, 32), "not a uint32"),
    (_kv_header(0, version=1), "unsupported GGUF version 1"),
    (_kv_header(0, tensors=1) + _key("t") + struct.pack("<I", 9), "a tensor with 9 dimensions"),
    (_kv_header(0, tensors=1) + _key("t") + struct.pack("<IQIQ", 1, 8, 99, 0), "unknown type 99"),
    (_kv_header(0, tensors=1) + _key("t") + struct.pack("<IQIQ", 1, 2**40, 0, 0), "ends at byte"),
    (_kv_header(0, tensors=1) + _key("t") + struct.pack("<IQIQ", 1, 8, 0, 4), "not a multiple of 32"),
    (_kv_header(0, tensors=1) + _key("t") + struct.pack("<IQIQ", 1, 8, 2, 0), "not whole blocks of 32"),
], ids=["entries", "key-length", "string", "array-u64", "value-type", "duplicate-key", "alignment",
        "alignment-type", "version-1", "dims", "tensor-type", "tensor-size", "tensor-offset",
        "tensor-blocks"])
def test_each_lie_of_the_header_is_one_clear_error(tmp_path: Path, body: bytes, message: str) -> None:
    path = _write(tmp_path, body + b"\0" * 64)
    with pytest.raises(NovaError, match="is not a valid GGUF file") as err:
        check_gguf_structure(path)
    assert message in str(err.value) and len(err.value.lines()) == 1


def test_a_header_cut_short_is_refused(tmp_path: Path) -> None:
    for cut in (b"GGUF\x03\x00", _kv_header(1)[:-3], _kv_header(1) + _key("a")[:5]):
        with pytest.raises(NovaError, match=r"the file ends inside the header|more than 5 bytes can hold"):
            check_gguf_structure(_write(tmp_path, cut))


def test_a_truncated_real_header_is_refused(tmp_path: Path) -> None:
    if not SMOLLM2_GGUF.exists():
        pytest.fail(f"{SMOLLM2_GGUF} not found: run 'bash scripts/setup.sh' first")
    with SMOLLM2_GGUF.open("rb") as fh:
        head = fh.read(400_000)  # inside the tokenizer's arrays
    with pytest.raises(NovaError, match=r"the file ends inside the header|claims"):
        check_gguf_file(_write(tmp_path, head))
    with SMOLLM2_GGUF.open("rb") as fh:
        head = fh.read(20_000_000)  # metadata whole, tensor data cut short
    with pytest.raises(NovaError, match=r"tensor b'.*' ends at byte \d+, but the file has 20000000 bytes"):
        check_gguf_file(_write(tmp_path, head, "cut.gguf"))
