"""An error raised while a training progress bar is on screen starts a line of its own."""

from __future__ import annotations

import sys

import pytest

from nova.errors import NovaError


def test_an_error_during_a_progress_bar_is_printed_on_its_own_line(monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from tqdm.auto import tqdm

    import nova.cli.main as main

    bar = tqdm(total=10, desc="d/sft", ascii=True)  # as nova's ProgressCallback draws it, on stderr
    bar.update(1)

    def fails(**_: object) -> None:
        raise NovaError("rank 0 lost another rank of the run")

    monkeypatch.setattr(main, "app", fails)
    monkeypatch.setattr(sys, "argv", ["nova", "train"])
    with pytest.raises(SystemExit):
        main.run()
    err = capsys.readouterr().err
    assert "error: rank 0 lost another rank of the run" in err.splitlines(), err  # a whole line, not a bar's tail
