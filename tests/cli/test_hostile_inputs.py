"""Hostile or broken inputs: one clear line and exit 2, in seconds and bounded memory, nothing written.

Each case runs the real CLI in a subprocess under ``limits.run_limited`` (15 s, 3 GiB of address
space). Before these fixes the cases below hung with growing memory (alias bomb, GGUF array bomb,
``--gpus 100000000``), or ended in "internal error" with exit 1 (deep nesting, long integers,
typer's own parameter errors, a file name that is not UTF-8, a bad prompts file).
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

from limits import assert_one_error, run_limited

GOOD = json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
DEEP = 20_000
LONG_INT = "9" * 5000


def _bomb_yaml() -> str:
    """A "billion laughs": nine levels of nine aliases each, 9**9 strings once expanded (~330 bytes)."""
    lines = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    return "\n".join(lines) + "\n"


def _phase(tmp_path: Path, extra: str = "") -> Path:
    data = tmp_path / "d.jsonl"
    data.write_text(GOOD + "\n")
    config = tmp_path / "phase.yaml"
    config.write_text(f"name: t\nmodel:\n  base: some/model\ndata:\n  datasets:\n    - path: {data}\n{extra}")
    return config


def test_yaml_alias_bomb_config_is_refused_fast(tmp_path: Path) -> None:
    config = tmp_path / "bomb.yaml"
    config.write_text(_bomb_yaml())
    assert len(config.read_bytes()) < 400
    out = run_limited("train", "--dry-run", "--config", str(config))
    assert_one_error(out, f"{config}:", "expands to more than 100000 values")


def test_yaml_alias_bomb_in_a_set_value_is_refused(tmp_path: Path) -> None:
    levels = ['&a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        levels.append(f"&{name} [{', '.join([f'*{prev}'] * 9)}]")
    out = run_limited("train", "--dry-run", "--config", str(_phase(tmp_path)),
                      "--set", f"smoke_prompts=[{', '.join(levels)}]")
    assert_one_error(out, "--set smoke_prompts=", "expands to more than 100000 values")


@pytest.mark.parametrize("text", [
    "a: " + "[" * DEEP + "]" * DEEP + "\n",  # past the YAML parser's recursion
    "a: " + "[" * 100 + "]" * 100 + "\n",  # parses, but deeper than any config
], ids=["20000-deep", "100-deep"])
def test_deeply_nested_config_is_refused(tmp_path: Path, text: str) -> None:
    config = tmp_path / "deep.yaml"
    config.write_text(text)
    assert_one_error(run_limited("train", "--dry-run", "--config", str(config)), "nested too deeply")


def test_huge_integer_in_a_config_names_its_line(tmp_path: Path) -> None:
    config = _phase(tmp_path, f"training:\n  seed: {LONG_INT}\n")
    assert_one_error(run_limited("train", "--dry-run", "--config", str(config)), f"{config}:8",
                     "an integer of 5000 characters")
    out = run_limited("train", "--dry-run", "--config", str(_phase(tmp_path)), "--set", f"training.seed={LONG_INT}")
    assert_one_error(out, "an integer of 5000 characters")


@pytest.mark.parametrize(("name", "text"), [
    ("deep.jsonl", GOOD + "\n" + "[" * DEEP + "]" * DEEP + "\n"),
    ("long.jsonl", GOOD + "\n" + '{"text": ' + LONG_INT + "}\n"),
])
def test_deep_or_huge_data_record_is_a_record_problem(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    assert_one_error(run_limited("data", "check", str(path)), f"{path}:2: ")
    skipped = run_limited("data", "check", str(path), "--on-error", "skip", "--json")
    assert skipped.returncode == 0, skipped.stderr
    report = json.loads(skipped.stdout)["stages"][0]["report"]
    assert report["kept"] == 1 and report["skipped"] == {"too_complex": 1}


@pytest.mark.parametrize("body", ["[" * DEEP + "]" * DEEP, f"[{GOOD}, {{\"text\": {LONG_INT}}}]"],
                         ids=["deep", "long-int"])
def test_deep_or_huge_json_file_is_a_file_problem(tmp_path: Path, body: str) -> None:
    path = tmp_path / "d.json"
    path.write_text(body)
    assert_one_error(run_limited("data", "check", str(path)), f"{path}: ")


def test_absurd_numbers_in_a_config_are_refused(tmp_path: Path) -> None:
    config = _phase(tmp_path, "training:\n  learning_rate: .inf\n  max_steps: 1e26\n  gpu: -1\ndpo:\n  beta: .nan\n")
    err = assert_one_error(run_limited("train", "--dry-run", "--config", str(config)))
    for key in ("training.learning_rate", "training.max_steps", "training.gpu", "dpo.beta"):
        assert key in err, (key, err)


def test_preflight_with_absurd_gpu_count_is_refused(tmp_path: Path) -> None:
    out = run_limited("preflight", "--config", str(_phase(tmp_path)), "--gpus", "100000000", "--gpu-memory", "24GiB")
    assert_one_error(out, "--gpus must be between 1 and 1024")


def test_typer_parameter_errors_are_usage_errors_not_internal_ones(tmp_path: Path) -> None:
    out = run_limited("infer", "--model", str(tmp_path), "--max-new-tokens", "-1", "--prompt", "hi")
    assert out.returncode == 2 and "Traceback" not in out.stderr and "internal error" not in out.stderr
    assert "nova infer [OPTIONS]" in out.stderr and "Invalid value for '--max-new-tokens'" in out.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="a file name that is not UTF-8 needs a POSIX byte path")
@pytest.mark.parametrize("args", [
    (b"train", b"--config", b"\xff.yaml"),
    (b"data", b"check", b"\xff.jsonl"),
    (b"models", b"import-gguf", b"\xff.gguf"),
], ids=["config", "data", "gguf"])
def test_file_name_that_is_not_utf8_is_printed_escaped(tmp_path: Path, args: tuple[bytes, ...]) -> None:
    assert_one_error(run_limited(*args, cwd=str(tmp_path)), "\\udcff")


PROMPT_FILES = {
    "missing": (None, "does not exist"),
    "directory": ("DIR", "is not a file"),
    "not-utf8": (b'{"prompt": "caf\xe9"}\n', "1: not UTF-8: byte 0xe9"),
    "bad-line": (b'{"prompt": "a"}\n{"nope": 1}\n', '2: expected {"prompt": TEXT}'),
    "bad-messages": (b'{"messages": [1, 2]}\n', '1: "messages" must be a non-empty list'),
    "deep": (("[" * DEEP + "]" * DEEP + "\n").encode(), "1: nested too deeply"),
    "long-int": (b'{"prompt": ' + LONG_INT.encode() + b"}\n", "1: a number too long"),
}


@pytest.mark.parametrize("case", sorted(PROMPT_FILES))
def test_bad_prompts_file_fails_before_the_model_loads(tmp_path: Path, case: str) -> None:
    content, needle = PROMPT_FILES[case]
    path = tmp_path / "prompts.jsonl"
    if content == "DIR":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    not_a_model = tmp_path / "not-a-model"  # were the model loaded first, it would fail on this
    not_a_model.mkdir()
    out = run_limited("infer", "--model", str(not_a_model), "--prompts-file", str(path))
    assert_one_error(out, "prompts", needle)


def test_infer_on_a_run_with_a_garbage_config_is_one_line(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: [unclosed\n")
    assert_one_error(run_limited("infer", "--model", str(run), "--prompt", "hi"), f"{run / 'config.yaml'}")
    (run / "config.yaml").write_text("- just\n- a list\n")
    assert_one_error(run_limited("infer", "--model", str(run), "--prompt", "hi"), f"{run / 'config.yaml'}")


def test_gguf_array_bomb_is_refused_without_allocating(tmp_path: Path) -> None:
    # header: v3, 0 tensors, 1 metadata entry; the entry: key "a", an array of 2**62 strings
    bomb = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"a" + struct.pack("<IIQ", 9, 8, 2**62)
    path = tmp_path / "bomb.gguf"
    path.write_bytes(bomb + b"\0" * (98 - len(bomb)))
    out = run_limited("models", "import-gguf", str(path), "--out", str(tmp_path / "out"))
    assert_one_error(out, "not a valid GGUF file", f"claims {2**62} items")
    assert not (tmp_path / "out").exists()
