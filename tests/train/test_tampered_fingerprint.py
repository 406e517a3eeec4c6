"""A fingerprint edited after nova wrote it (in a checkpoint's seal, a DONE or COMPLETE record) is said to be
changed, not taken for a record of an older nova; the ones nova writes read back intact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_train import phase_yaml

from nova.config import load_yaml_config
from nova.console import RunLog
from nova.errors import NovaError
from nova.runs.checkpoints import SEAL, latest_checkpoint
from nova.runs.fingerprint import Fingerprint, read_recorded
from nova.train.pipeline import run_config


def test_read_recorded_tells_missing_from_changed() -> None:
    fp = Fingerprint({"training.learning_rate": 0.005, "lora.r": 8})
    assert read_recorded({"fingerprint": fp.to_dict()}, "fingerprint") == (fp, None)
    assert read_recorded({}, "fingerprint") == (None, None)  # an older nova wrote none
    edited = {**fp.to_dict(), "values": {"training.learning_rate": 0.001, "lora.r": 8}}
    assert read_recorded({"fingerprint": edited}, "fingerprint")[1] == "its values no longer give its digest"
    assert read_recorded({"fingerprint": "junk"}, "fingerprint")[1] == "it is not a fingerprint as nova writes one"


@pytest.mark.trains
def test_an_edited_record_is_named_changed(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = phase_yaml(tmp_path, tiny_model_dir, max_steps="2")
    run_config(load_yaml_config(config), log=RunLog(tmp_path / "log.txt"))
    run = tmp_path / "run"
    seal = json.loads((latest_checkpoint(run / "checkpoints" / "sft") / SEAL).read_text())
    assert read_recorded(seal, "fingerprint")[1] is None  # what nova writes reads back intact
    complete = json.loads((run / "COMPLETE").read_text())
    complete["fingerprints"][0]["values"]["training.learning_rate"] = 0.001
    (run / "COMPLETE").write_text(json.dumps(complete))
    with pytest.raises(NovaError) as caught:
        run_config(load_yaml_config(config), log=RunLog(tmp_path / "log2.txt"))
    text = str(caught.value)
    assert "changed after nova wrote it (its values no longer give its digest)" in text
    assert "older nova" not in text
