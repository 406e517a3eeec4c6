"""Output made for an 80-column tmux pane: lines wrap between words with a hanging indent on a terminal,
and stay one record per line when piped (log files, grep, scripts)."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_nova
from nova.console import RunLog, hanging_indent, wrap

DEMO = "configs/demo/pipeline.yaml"


class FakeTty(io.StringIO):
    """A stream that says it is a terminal (what tmux gives nova)."""

    def isatty(self) -> bool:
        return True


def in_pty(*args: str, columns: int = 80, cwd: Path = ROOT) -> tuple[int, str]:
    """Run the real CLI with a pseudo-terminal as stdout and stderr, as in a tmux pane of ``columns``."""
    primary, secondary = pty.openpty()
    env = {**os.environ, "COLUMNS": str(columns), "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "nova", *args], stdout=secondary, stderr=secondary,
                            stdin=subprocess.DEVNULL, cwd=cwd, env=env)
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(primary)
    return proc.wait(timeout=120), b"".join(chunks).decode("ascii").replace("\r\n", "\n")


def test_wrap_breaks_between_words_with_a_hanging_indent() -> None:
    line = ("[doica/sft] 85 train / 10 eval examples, micro batch 4 x accumulation 1 = 4 per step, "
            "lr 0.001 cosine, and more words to go past eighty columns")
    lines = wrap(line, 80)
    assert len(lines) == 2 and all(len(x) <= 80 for x in lines)
    assert lines[1].startswith(" " * len("[doica/sft] ")) and not lines[1][len("[doica/sft] ")].isspace()
    assert " ".join(x.strip() for x in lines).split() == line.split()  # no word was cut


def test_a_label_column_continues_under_its_value() -> None:
    line = "  loss:       train 0.4123, eval 0.5234 (step 88), " + "and a long tail of words " * 3
    lines = wrap(line, 60)
    assert all(x.startswith(" " * 14) for x in lines[1:]) and hanging_indent(line, 60) == 14


def test_a_path_longer_than_a_line_is_cut_after_a_slash_not_inside_a_name() -> None:
    path = "/very/long/path/" + "/".join(f"directory{i}" for i in range(12)) + "/data.jsonl"
    lines = wrap(f"  source {path}: 95 read", 80)
    assert all(len(x) <= 80 for x in lines)
    assert "".join(x.strip() + (" " if x.endswith(":") else "") for x in lines).replace(" ", "") == \
        f"source{path}:95read"
    assert all(x.rstrip().endswith("/") for x in lines[:-1])


def test_piped_output_is_left_whole() -> None:
    line = "x " * 100
    assert wrap(line, None) == [line]


def test_run_log_wraps_the_console_and_keeps_the_file_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    screen = FakeTty()
    log = RunLog(tmp_path / "run.log", screen)
    log.attach()
    line = "[doica/sft] 85 train / 10 eval examples, micro batch 4 x accumulation 1 = 4 per step, lr 0.001 cosine"
    log.say(line)
    shown = screen.getvalue().splitlines()
    assert len(shown) == 2 and max(map(len, shown)) <= 80
    assert (tmp_path / "run.log").read_text().rstrip("\n").endswith(line)  # one record per line in the file
    piped = io.StringIO()
    RunLog(None, piped).say(line)
    assert piped.getvalue() == line + "\n"


@pytest.mark.parametrize("args", [("config",), ("data", "check", "--config", DEMO),
                                  ("train", "--config", DEMO, "--set", "training.learing_rate=1")])
def test_no_line_wider_than_80_columns_in_a_terminal(args: tuple[str, ...]) -> None:
    code, shown = in_pty(*args)
    piped = run_nova(*args, cwd=ROOT, env={"COLUMNS": "80"})
    assert code == piped.returncode
    lines = shown.splitlines()
    assert lines and max(map(len, lines)) <= 80, [x for x in lines if len(x) > 80][:3]
    # the same words in the same order: wrapping only ever happened between words
    assert shown.split() == (piped.stdout + piped.stderr).split()
    assert any(len(x) > 80 for x in (piped.stdout + piped.stderr).splitlines())  # piped: records stay whole


def test_preflight_on_a_terminal_groups_checks_under_their_stage() -> None:
    _, shown = in_pty("preflight", "--config", DEMO)
    lines = shown.splitlines()
    assert max(map(len, lines)) <= 80
    assert "doica/sft:" in lines and any(x.startswith("[PASS] learning_rate  ") for x in lines)
    piped = run_nova("preflight", "--config", DEMO, cwd=ROOT).stdout.splitlines()
    assert any(x.startswith("[PASS] learning_rate[doica/sft]") for x in piped)  # scripts read it as before
