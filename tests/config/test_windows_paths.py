"""Windows paths in configs and ``--set``: drive letters and backslashes are kept as written, and a
double-quoted one whose backslashes YAML read as escapes is refused with the fix, never used."""

from __future__ import annotations

from pathlib import Path

import pytest

from nova.config import load_yaml_config
from nova.config.load import _parse_override
from nova.errors import ConfigError


def _config(tmp_path: Path, base: str, data: str) -> Path:
    path = tmp_path / "phase.yaml"
    path.write_text(f"name: w\nmodel: {{base: {base}, quantization: none}}\ndata:\n  datasets: [{{path: {data}}}]\n",
                    encoding="utf-8")
    return path


def test_set_keeps_drive_letters_and_backslashes_as_written() -> None:
    assert _parse_override("data.datasets.0.path=d:\\Github\\data\\doica.jsonl") == (
        ["data", "datasets", "0", "path"], "d:\\Github\\data\\doica.jsonl")
    assert _parse_override("output_dir=D:/runs/qwen3") == (["output_dir"], "D:/runs/qwen3")
    assert _parse_override("model.base=\\\\server\\models\\qwen") == (["model", "base"], "\\\\server\\models\\qwen")


def test_single_quoted_and_plain_windows_paths_reach_the_config_unchanged(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "x"}\n')
    cfg = _config(tmp_path, "'d:\\new\\models\\qwen'", str(data))
    loaded = load_yaml_config(cfg, ["output_dir=d:\\runs\\new"])
    assert loaded.config.model.base == "d:\\new\\models\\qwen"  # type: ignore[union-attr]
    assert loaded.config.output_dir == "d:\\runs\\new"  # type: ignore[union-attr]


def test_a_double_quoted_windows_path_read_as_escapes_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "x"}\n')
    cfg = _config(tmp_path, '"d:\\new\\tiny"', str(data))  # YAML reads \n and \t: d:<newline>ew<tab>iny
    with pytest.raises(ConfigError) as err:
        load_yaml_config(cfg)
    text = str(err.value)
    assert "phase.yaml:2 model.base: the path 'd:\\new\\tiny' holds a control character" in text
    assert "write a Windows path in single quotes" in text
    good = _config(tmp_path, "m", str(data))
    with pytest.raises(ConfigError, match=r"--set|output_dir: the path .* holds a control character"):
        load_yaml_config(good, ['output_dir="d:\\runs\\new"'])


def test_an_unknown_escape_says_how_to_write_the_path(tmp_path: Path) -> None:
    cfg = _config(tmp_path, '"d:\\data\\models"', "x.jsonl")  # \d is no YAML escape: a YAML error
    with pytest.raises(ConfigError, match=r"unknown escape character 'd' \(inside double quotes YAML reads a "
                       r"backslash as an escape"):
        load_yaml_config(cfg)
