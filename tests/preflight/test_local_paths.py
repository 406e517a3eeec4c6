"""A path whose first component exists here is local: no hub request, one line, a did-you-mean."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from preflight_support import FIXTURES, no_gpu

from nova.config.load import load_yaml_config
from nova.data.sources import looks_like_hub_id
from nova.errors import ConfigError
from nova.preflight import run_preflight
from nova.preflight.model_source import hub_download_command, resolve_model


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with models/smollm2 and mydata/chat.jsonl; any hub request fails the test."""
    import urllib.request

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "smollm2").mkdir(parents=True)
    (tmp_path / "models" / "smollm2" / "config.json").write_text((FIXTURES / "smollm2-135m.json").read_text())
    (tmp_path / "mydata").mkdir()
    (tmp_path / "mydata" / "chat.jsonl").write_text(json.dumps({"text": "hello there"}) + "\n")

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a local path asked the hub")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    return tmp_path


def _config(here: Path, base: str, data: str) -> Path:
    cfg = {"name": "p", "output_dir": str(here / "run"), "model": {"base": base},
           "data": {"datasets": [{"path": data}]}, "training": {"max_steps": 10}}
    (here / "p.yaml").write_text(yaml.safe_dump(cfg))
    return here / "p.yaml"


def test_a_mistyped_model_directory_is_local_with_a_did_you_mean_listed_once(here: Path) -> None:
    start = time.monotonic()
    report = run_preflight(load_yaml_config(_config(here, "models/smolm2", "mydata/chat.jsonl")), probe=no_gpu())
    assert time.monotonic() - start < 20
    failed = [c for c in report.checks if c.status == "fail"]
    assert [c.name for c in failed] == ["model"]
    assert failed[0].message == "local path models/smolm2 does not exist (did you mean models/smollm2?)"
    assert not any("smolm2" in c.message for c in report.checks if c.name != "model")  # said once


def test_a_mistyped_data_path_under_a_local_directory_fails_at_once_with_a_did_you_mean(here: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_yaml_config(_config(here, "models/smollm2", "mydata/chats"))
    assert "data file or directory not found: mydata/chats (did you mean mydata/chat.jsonl?)" in str(info.value)
    assert not looks_like_hub_id("mydata/chats")  # never read as a hub dataset either
    assert looks_like_hub_id("someone/chats")


def test_resolve_model_never_asks_the_hub_for_a_local_path(here: Path) -> None:
    source = resolve_model("models/smolm2", allow_network=True)
    assert source.kind == "missing" and source.message.startswith("local path models/smolm2 does not exist")


def test_hub_hints_name_the_installed_client() -> None:
    from importlib.metadata import version

    major, minor = (int(x) for x in version("huggingface_hub").split(".")[:2])
    expected = "hf" if (major, minor) >= (0, 34) else "huggingface-cli"
    assert hub_download_command("org/model") == f"{expected} download org/model"
