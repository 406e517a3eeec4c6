"""Helpers and fixtures for the data pipeline tests (imported by tests/test_data_*.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nova.config.data_schema import DataConfig, DatasetSpec


@pytest.fixture(scope="session")
def tok(tiny_model_dir: Path) -> Any:
    """The tiny ChatML tokenizer (pad == eos == <|im_end|>, like SmolLM2)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True)


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def chat(user: str, answer: str, system: str | None = None) -> dict[str, Any]:
    msgs = [{"role": "system", "content": system}] if system else []
    return {"messages": [*msgs, {"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def data_cfg(*paths: Path | str, tmp: Path | None = None, **kwargs: Any) -> DataConfig:
    """A DataConfig over the given files; no holdout unless asked, cache under tmp."""
    kwargs.setdefault("eval_split", 0.0)
    if tmp is not None:
        kwargs.setdefault("cache_dir", str(tmp / "cache"))
    specs = [p if isinstance(p, DatasetSpec) else DatasetSpec(path=str(p)) for p in paths]
    return DataConfig(datasets=specs, **kwargs)


def trained_segments(tokenizer: Any, ids: list[int], labels: list[int]) -> list[str]:
    """The decoded runs of tokens that carry loss, in order."""
    runs: list[list[int]] = []
    previous_trained = False
    for token, label in zip(ids, labels, strict=True):
        trained = label != -100
        if trained:
            assert label == token, "a trained label must equal its input token"
            if not previous_trained:
                runs.append([])
            runs[-1].append(token)
        previous_trained = trained
    return [tokenizer.decode(r) for r in runs]
