"""The method registry: every spec is whole, its trainer exists, and the schema, data and docs follow it."""

from __future__ import annotations

import inspect
import re
import typing
from pathlib import Path

import pytest

from nova.config.schema import PhaseConfig, StageConfig
from nova.data.formats import FORMAT_NAMES, formats_for
from nova.lazy import resolve
from nova.methods import METHOD_NAMES, all_specs, method_spec

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_each_spec_is_its_module_and_names_a_trainer(name: str) -> None:
    spec = method_spec(name)
    assert spec.name == name and spec.summary
    builder = resolve(spec.trainer)  # imported as the stage imports it when it trains
    assert callable(builder) and list(inspect.signature(builder).parameters) == ["inputs"]
    assert builder.__name__ == f"build_{name}_trainer"
    if spec.before_loading is not None:
        assert callable(resolve(spec.before_loading))
    assert formats_for(spec.records), f"{name} reads {spec.records}, which no format gives"
    assert 0 < spec.lora_lr.low <= spec.lora_lr.suggested <= spec.lora_lr.high
    if spec.full_lr is not None:
        assert 0 < spec.full_lr.low <= spec.full_lr.suggested <= spec.full_lr.high


def test_the_schema_takes_its_choices_and_sections_from_the_registry() -> None:
    method = StageConfig.model_fields["method"].annotation
    assert typing.get_args(method) == METHOD_NAMES
    sections = {s.name: s.section for s in all_specs() if s.section is not None}
    stage_keys = set(StageConfig.model_fields) - {"method", "data", "training"}
    assert stage_keys == set(sections)
    for name, section in sections.items():
        assert StageConfig.model_fields[name].annotation is section
    assert "stages" in PhaseConfig.model_fields and not stage_keys & set(PhaseConfig.model_fields)


def test_a_spec_alone_decides_what_the_schema_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch rules and full fine-tuning's methods are read from the spec, nowhere else."""
    from dataclasses import replace

    import nova.methods as methods

    PhaseConfig.model_validate({"name": "p", "model": {"base": "m", "quantization": "none"}, "adapter": "full",
                                "method": "dpo"})
    strict = replace(method_spec("dpo"), full_lr=None, batch_problem=lambda s, micro, acc: "two or more"
                     if micro < 2 else None)
    monkeypatch.setattr(methods, "method_spec", lambda name: strict if name == "dpo" else method_spec(name))
    monkeypatch.setattr("nova.config.schema.method_spec", methods.method_spec)
    monkeypatch.setattr("nova.config.full_rules.all_specs", lambda: [methods.method_spec(n) for n in METHOD_NAMES])
    with pytest.raises(ValueError, match="two or more"):
        StageConfig.model_validate({"method": "dpo", "training": {"micro_batch_size": 1}})
    with pytest.raises(ValueError, match="not available with adapter: full"):
        PhaseConfig.model_validate({"name": "p", "model": {"base": "m", "quantization": "none"}, "adapter": "full",
                                    "method": "dpo"})


def test_docs_methods_table_has_each_methods_rates() -> None:
    """docs/methods.md's table says what each spec says: its data and its LoRA learning rates."""
    text = (ROOT / "docs" / "methods.md").read_text(encoding="utf-8")
    for spec in all_specs():
        row = next((line for line in text.splitlines() if line.startswith(f"| `{spec.name}` |")), None)
        assert row is not None, f"docs/methods.md has no row for {spec.name}"
        lr = spec.lora_lr
        assert f"{lr.low:.0e} .. {lr.high:.0e} ({lr.suggested:.0e})".replace("e-0", "e-") in row, row


def test_every_format_a_method_reads_is_in_the_table() -> None:
    assert {f for s in all_specs() for f in formats_for(s.records)} == set(FORMAT_NAMES)


def test_every_extra_nova_tells_users_to_install_exists() -> None:
    """``pip install 'nova-tune[x]'`` in the code or docs names an extra pyproject.toml has."""
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = pyproject.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    extras = set(re.findall(r"^([a-z0-9_-]+) = \[", section, flags=re.M))
    assert {"dev", "ui"} <= extras
    told: dict[str, str] = {}
    for path in [*ROOT.joinpath("src").rglob("*.py"), *ROOT.joinpath("docs").glob("*.md"), ROOT / "README.md",
                 *ROOT.joinpath("scripts").glob("*")]:
        if path.is_file():
            for extra in re.findall(r"nova-tune\[([a-z0-9_-]+)\]", path.read_text(encoding="utf-8", errors="replace")):
                told.setdefault(extra, path.relative_to(ROOT).as_posix())
    assert told and {e: p for e, p in told.items() if e not in extras} == {}


def test_docs_data_md_has_a_row_per_format() -> None:
    text = (ROOT / "docs" / "data.md").read_text(encoding="utf-8")
    assert [f for f in FORMAT_NAMES if f"\n| {f} |" not in text] == []
