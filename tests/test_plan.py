"""The plan: one derivation of phases, run directories, chains and stage labels."""

from __future__ import annotations

from pathlib import Path

import pytest

from nova.config import load_yaml_config
from nova.errors import NovaError
from nova.plan import make_plan


def _write(tmp_path: Path, text: str) -> Path:
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    path = tmp_path / "c.yaml"
    path.write_text(text.replace("DATA", str(data)))
    return path


def test_pipeline_plan_has_run_dirs_chains_and_one_label_scheme(tmp_path: Path) -> None:
    path = _write(tmp_path, f"""
output_dir: {tmp_path / "out"}
phases:
  - name: doica
    model: {{base: some/model}}
    data: {{datasets: [{{path: DATA}}]}}
  - name: sora
    start_from: doica
    stages:
      - {{method: sft, data: {{datasets: [{{path: DATA}}]}}}}
      - {{method: dpo, data: {{datasets: [{{path: DATA}}]}}}}
      - {{method: sft, data: {{datasets: [{{path: DATA}}]}}}}
""")
    plan = make_plan(load_yaml_config(path))
    assert plan.is_pipeline and plan.state_path == tmp_path / "out" / "pipeline.json"
    doica, sora = plan.phases
    assert doica.run_dir == tmp_path / "out" / "doica" and doica.chain == ()
    assert [name for name, _ in sora.chain] == ["doica"] and sora.chain[0][1].path == doica.run_dir
    assert sora.model.base == "some/model"
    assert [s.label for s in sora.stages] == ["sora/sft", "sora/dpo", "sora/sft-2"]
    with pytest.raises(NovaError, match="has not finished"):
        sora.chain_refs()
    assert [p.name for p in plan.select("sora").phases] == ["sora"]
    with pytest.raises(NovaError, match="no phase named 'x'"):
        plan.select("x")


def test_a_single_phase_writes_to_its_own_run_dir(tmp_path: Path) -> None:
    path = _write(tmp_path, f"name: solo\noutput_dir: {tmp_path / 'r'}\nmodel: {{base: m}}\n"
                            "data: {datasets: [{path: DATA}]}\n")
    plan = make_plan(load_yaml_config(path))
    assert not plan.is_pipeline and plan.state_path is None
    assert plan.phases[0].run_dir == tmp_path / "r" and [s.label for s in plan.phases[0].stages] == ["solo/sft"]


def test_a_phase_file_with_start_from_needs_its_pipeline(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: b\nstart_from: a\ndata: {datasets: [{path: DATA}]}\n")
    with pytest.raises(NovaError, match="only works inside a pipeline"):
        make_plan(load_yaml_config(path))


def test_nova_train_makes_its_plan_once(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The launch decision, preflight and training read the one plan ``nova train`` makes."""
    import nova.plan
    import nova.preflight.run
    import nova.train.pipeline
    from nova.cli.train_cmd import train
    from nova.train.context import PhaseResult

    made: list[str] = []

    def counted(loaded):  # type: ignore[no-untyped-def]
        made.append(str(loaded.path))
        return make_plan(loaded)

    for module in (nova.plan, nova.preflight.run, nova.train.pipeline):
        monkeypatch.setattr(module, "make_plan", counted)
    trained: list[str] = []

    def run_phase(run, on_start=None):  # type: ignore[no-untyped-def]  # the phase itself is not the point here
        trained.append(run.phase.name)
        return PhaseResult(run.phase.name, run.run_dir, run.run.adapter, [], 0.0)

    monkeypatch.setattr(nova.train.pipeline, "run_phase", run_phase)
    path = _write(tmp_path, f"name: p\nmodel: {{base: {tiny_model_dir}}}\ndata: {{datasets: [{{path: DATA}}]}}\n"
                            f"output_dir: {tmp_path / 'run'}\nlogs_dir: {tmp_path / 'logs'}\n")
    train(config=path, set_=None, phase=None, force=False, dry_run=False, no_preflight=False, fresh=False,
          resume_with_changes=False, nproc_per_node=None, nnodes=1, node_rank=0, master_addr="127.0.0.1",
          master_port=29500, force_gates=False, probe=False, probe_steps=4, probe_out=None, json_out=False)
    assert trained == ["p"] and made == [str(path)]
