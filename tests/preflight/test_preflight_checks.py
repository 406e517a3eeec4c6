"""The non-GPU checks: learning rate, schedule, data, model, chat template, environment, JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from preflight_support import FIXTURES, busy_4090, cuda_env, loaded, no_gpu

from nova.config.schema import StageConfig, TrainingConfig
from nova.preflight import run_preflight
from nova.preflight.checks_inputs import check_learning_rate, check_schedule, check_warmup
from nova.preflight.environment import cpu_info, known_bad
from nova.preflight.model_source import resolve_model


def _stage(method: str = "sft", **training: object) -> StageConfig:
    return StageConfig(method=method, training=TrainingConfig(**training))


@pytest.mark.parametrize(("lr", "status"), [(5e-6, "warn"), (2e-4, "pass"), (1e-5, "warn"), (5e-5, "pass"),
                                           (3e-3, "warn")])
def test_lora_learning_rate_sanity(lr: float, status: str) -> None:
    check = check_learning_rate("learning_rate", _stage(learning_rate=lr))
    assert check.status == status
    if lr < 5e-5:  # 1e-5 is 20x below the typical 2e-4: it warns, with the rate to use
        assert "barely learn" in check.message and "2e-04" not in check.fix
        assert check.fix == "raise training.learning_rate to about 0.0002, the typical rate for LoRA sft"


def test_full_fine_tuning_has_its_own_range() -> None:
    assert check_learning_rate("lr", _stage(learning_rate=2e-5), full=True).status == "pass"
    high = check_learning_rate("lr", _stage(learning_rate=2e-4), full=True)
    assert high.status == "warn" and "about 2e-05" in high.fix


@pytest.mark.parametrize(("training", "records", "status"), [
    ({"warmup_steps": 50, "num_epochs": 1}, 23, "warn"),  # 2 steps (23 records / 16): longer than the run
    ({"warmup_steps": 5, "max_steps": 100}, None, "pass"),
    ({"warmup_ratio": 0.5}, None, "warn"),
    ({"warmup_ratio": 0.05}, None, "pass"),
])
def test_warmup_longer_than_a_fifth_of_the_run_warns_with_a_fix(training: dict[str, object], records: int | None,
                                                                  status: str) -> None:
    check = check_warmup("warmup", _stage(**training), records)
    assert check.status == status, check.message
    if status == "warn":
        assert "warmup" in check.fix and check.fix.startswith("set training.warmup")


def test_dpo_has_its_own_learning_rate_range() -> None:
    assert check_learning_rate("lr", _stage("dpo", learning_rate=5e-6)).status == "pass"
    assert check_learning_rate("lr", _stage("dpo", learning_rate=2e-4)).status == "warn"


def test_schedule_flags_overfitting_and_undertraining() -> None:
    over = check_schedule("schedule", _stage(max_steps=1000), records=1000)  # 1000 x 16 / 1000 = 16 epochs
    assert over.status == "warn" and "16.00 epochs" in over.message and "overfit" in over.message
    under = check_schedule("schedule", _stage(max_steps=10), records=10_000)  # 0.016 epochs
    assert under.status == "warn" and "under a third" in under.message
    fine = check_schedule("schedule", _stage(max_steps=200), records=1600)  # 2 epochs
    assert fine.status == "pass" and "2.00 epochs" in fine.message
    assert check_schedule("schedule", _stage(num_epochs=8), records=None).status == "warn"
    assert check_schedule("schedule", _stage(max_steps=10), records=None).status == "skip"


def test_schedule_uses_the_data_record_count(tmp_path: Path) -> None:
    # 200 records, eval_split 0.1 -> 180 train; 100 steps x 16 = 1600 sequences = 8.9 epochs
    report = run_preflight(loaded(tmp_path, "smollm2-135m", n=200, max_steps=100), probe=no_gpu())
    check = report.check("schedule")
    assert check is not None and check.status == "warn" and "over 180 records" in check.message


def test_bad_data_fails_with_the_record_named(tmp_path: Path) -> None:
    lf = loaded(tmp_path, "smollm2-135m")
    bad = Path(lf.config.stages[0].data.datasets[0].path)  # type: ignore[union-attr]
    bad.write_text('{"foo": 1}\n{"text": "fine"}\n')
    report = run_preflight(lf, probe=no_gpu())
    check = report.check("data")
    assert check is not None and check.status == "fail" and ":1:" in check.message and "foo" in check.message
    assert report.verdict == "fail"


def test_data_check_can_be_skipped(tmp_path: Path) -> None:
    report = run_preflight(loaded(tmp_path, "smollm2-135m"), probe=no_gpu(), check_data=False)
    check = report.check("data")
    assert check is not None and check.status == "skip"


def test_chat_data_needs_a_template_when_the_tokenizer_is_there(tmp_path: Path) -> None:
    lf = loaded(tmp_path, "smollm2-135m", chat=True)
    model = Path(lf.config.model.base)  # type: ignore[union-attr]
    only_config = run_preflight(lf, probe=no_gpu()).check("chat_template")
    assert only_config is not None and only_config.status == "skip"
    (model / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 2048}))
    missing = run_preflight(lf, probe=no_gpu()).check("chat_template")
    assert missing is not None and missing.status == "fail" and "model.chat_template" in missing.fix
    (model / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    found = run_preflight(lf, probe=no_gpu()).check("chat_template")
    assert found is not None and found.status == "pass"


def test_model_directory_with_only_config_json_is_enough(tmp_path: Path) -> None:
    report = run_preflight(loaded(tmp_path, "llama-3-8b"), probe=busy_4090(), env=cuda_env())
    check = report.check("model")
    assert check is not None and check.status == "warn" and "no weight files" in check.message
    assert report.estimate is not None and report.estimate["total_bytes"] > 10 * 1024**3


def test_hub_id_offline_and_not_cached_fails_plainly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = resolve_model("meta-llama/Llama-3.1-8B")
    assert source.kind == "missing"
    assert "HF_HUB_OFFLINE" in source.message and "not in the local cache" in source.message


def test_hub_id_found_in_the_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "hub" / "models--meta-llama--Llama-3.1-8B"
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text((FIXTURES / "llama-3-8b.json").read_text())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = resolve_model("meta-llama/Llama-3.1-8B")
    assert source.kind == "hub_cached" and source.path == snap and source.config is not None
    assert "offline" in source.message


def test_missing_local_path_and_gguf(tmp_path: Path) -> None:
    assert resolve_model(str(tmp_path / "nope")).kind == "missing"
    assert resolve_model(str(tmp_path / "model.gguf")).kind == "missing"
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_model(str(gguf), models_dir=str(tmp_path / "models")).kind == "gguf"


def test_known_bad_versions_are_flagged_with_a_reason() -> None:
    assert known_bad(cuda_env().versions) == []
    bad = known_bad({**cuda_env().versions, "peft": "0.10.0"})
    assert len(bad) == 1 and bad[0].startswith("peft 0.10.0 < 0.17")


def test_cpu_bf16_flags_from_proc_cpuinfo() -> None:
    cpuinfo = "processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu sse avx512f avx512_bf16 amx_bf16\n"
    memory = (24000000 * 1024, 20000000 * 1024)
    info = cpu_info(cpuinfo, memory)
    assert info.bf16 and info.flags == ("amx_bf16", "avx512_bf16") and info.model == "Test CPU"
    assert info.ram_total_bytes == 24000000 * 1024 and info.ram_available_bytes == 20000000 * 1024
    assert not cpu_info("flags\t: fpu sse avx2\n", memory).bf16


def test_cpu_and_ram_come_from_psutil_and_flags_only_where_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    from nova import system

    info = cpu_info()
    vm = psutil.virtual_memory()
    assert info.ram_total_bytes == vm.total and 0 < info.ram_available_bytes <= vm.total and info.cores >= 1
    monkeypatch.setattr(system, "on_linux", lambda: False)  # Windows and macOS list no CPU flags for a program
    assert system.cpu_description()[1] == () and not cpu_info().bf16


def test_json_schema_is_stable(tmp_path: Path) -> None:
    report = run_preflight(loaded(tmp_path, "mistral-7b-v0.2"), probe=busy_4090(), env=cuda_env())
    data = json.loads(json.dumps(report.to_dict()))
    assert set(data) == {"schema_version", "verdict", "checks", "gpus", "selected_gpu", "estimate", "auto_fit",
                         "environment"}
    assert data["schema_version"] == 1 and data["verdict"] == "fail"
    assert all(set(c) == {"name", "status", "message", "fix"} for c in data["checks"])
    assert {"index", "name", "total_bytes", "free_bytes", "compute_capability", "bf16", "flash_attention",
            "temperature_c", "processes", "hypothetical"} <= set(data["gpus"][0])
    assert data["gpus"][0]["processes"][0] == {"pid": 4242, "name": "ollama", "used_bytes": 6 * 1024**3}
    assert {"total_bytes", "breakdown"} <= set(data["estimate"])
    # keys are only ever added within a schema version (layer_recompute and dequant_buffers came with issue 13,
    # gradients and optimizer_step with full fine-tuning, issue 18; both 0 for LoRA)
    assert set(data["estimate"]["breakdown"]) == {"base_weights", "lora_weights", "lora_gradients",
                                                  "optimizer_states", "activations", "logits_and_loss",
                                                  "layer_recompute", "dequant_buffers", "dpo_reference",
                                                  "gradients", "optimizer_step",
                                                  "allocator_overhead", "cuda_context"}
    assert {"upper_bytes", "uncertainty", "regime"} <= set(data["estimate"])
    assert data["estimate"]["upper_bytes"] > data["estimate"]["total_bytes"]
    assert sum(data["estimate"]["breakdown"].values()) == data["estimate"]["total_bytes"]
    assert {"versions", "torch_cuda", "cpu", "gpu_status", "driver_version"} <= set(data["environment"])


def test_console_lines_are_ascii(tmp_path: Path) -> None:
    report = run_preflight(loaded(tmp_path, "mistral-7b-v0.2"), probe=busy_4090(), env=cuda_env())
    lines = report.lines()
    assert lines[-1] == "verdict: fail"
    assert all(line.isascii() for line in lines)
    assert any(line.strip().startswith("fix: stop ollama") for line in lines)


def test_pipeline_checks_every_stage(tmp_path: Path) -> None:
    import yaml
    from preflight_support import data_file, model_dir

    from nova.config.load import load_yaml_config

    model = model_dir(tmp_path, "smollm2-135m")
    text = data_file(tmp_path)
    pref = tmp_path / "pref.jsonl"
    pref.write_text("".join(json.dumps({"prompt": f"p{i}", "chosen": "good", "rejected": "bad"}) + "\n"
                            for i in range(50)))
    cfg = {"output_dir": str(tmp_path / "runs"), "phases": [
        {"name": "a", "model": {"base": str(model)}, "stages": [
            {"method": "sft", "data": {"datasets": [{"path": str(text)}]}},
            {"method": "dpo", "data": {"datasets": [{"path": str(pref)}]}, "training": {"learning_rate": 5e-6}}]},
        {"name": "b", "start_from": "a", "data": {"datasets": [{"path": str(text)}]}}]}
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    report = run_preflight(load_yaml_config(path), probe=no_gpu())
    names = [c.name for c in report.checks]
    assert {"memory[a/sft]", "memory[a/dpo]", "memory[b/sft]", "learning_rate[a/dpo]"} <= set(names)
    assert report.check("learning_rate[a/dpo]").status == "pass"  # type: ignore[union-attr]
    assert names.count("model") == 1
    assert report.estimate is not None and report.estimate["stage"] in {"a/sft", "a/dpo", "b/sft"}


def test_single_stage_keeps_plain_check_names(tmp_path: Path) -> None:
    report = run_preflight(loaded(tmp_path, "smollm2-135m"), probe=no_gpu())
    names = {c.name for c in report.checks}
    assert {"memory", "data", "learning_rate", "schedule", "precision", "chat_template"} <= names
    assert not any("[" in n for n in names)
    assert report.estimate is not None and report.estimate["stage"] == "pf/sft"


def test_record_count_reads_what_nova_data_reads(tmp_path: Path) -> None:
    from nova.config.data_schema import DataConfig
    from nova.data.sources import list_files, read_file
    from nova.preflight.checks_inputs import count_records

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "one"}\n\n  \n{"text": "two"}\nnot json\n')
    (src / "b.json").write_text(json.dumps({"x1": {"text": "three"}, "x2": {"text": "four"}}))
    (src / "sub" / "c.csv").write_text("text\nfive\nsix\n")
    (src / "README.md").write_text("not data")
    (src / ".hidden.jsonl").write_text('{"text": "ignored"}\n')
    read = sum(1 for f in list_files(src) for _ in read_file(f)[1])
    assert read == 7  # 3 lines of a.jsonl (one not JSON), 2 of b.json, 2 rows of c.csv
    data = DataConfig(datasets=[{"path": str(src)}], eval_split=0.0)
    assert count_records(data) == read
    capped = DataConfig(datasets=[{"path": str(src), "max_samples": 5}], eval_split=0.0)
    assert count_records(capped) == 5


def test_explicit_formats_and_unknown_fields_for_the_template(tmp_path: Path) -> None:
    from nova.config.data_schema import DataConfig
    from nova.preflight.checks_inputs import needs_chat_template

    def needs(record: dict, **spec: object) -> bool | None:
        path = tmp_path / "d.jsonl"
        path.write_text(json.dumps(record) + "\n")
        return needs_chat_template(DataConfig(datasets=[{"path": str(path), **spec}]))

    # nova.data renders every format but text through the chat template
    assert needs({"prompt": "q", "completion": "a"}) is True
    assert needs({"text": "plain", "id": 3}) is False
    assert needs({"body": "plain"}, format="text") is False
    assert needs({"foo": 1}) is None


def test_auto_format_with_columns_detects_chat_data(tmp_path: Path) -> None:
    from nova.config.data_schema import DataConfig
    from nova.preflight.checks_inputs import needs_chat_template

    chat = tmp_path / "c.jsonl"
    chat.write_text(json.dumps({"dialog": [{"role": "user", "content": "hi"}]}) + "\n")
    text = tmp_path / "t.jsonl"
    text.write_text(json.dumps({"body": "plain"}) + "\n")
    assert needs_chat_template(DataConfig(datasets=[{"path": str(chat), "columns": {"messages": "dialog"}}]))
    assert needs_chat_template(DataConfig(datasets=[{"path": str(text), "columns": {"text": "body"}}])) is False


def test_hot_gpu_is_a_warning(tmp_path: Path) -> None:
    from preflight_support import FakeProbe

    from nova.preflight.gpus import GpuInfo, GpuSnapshot

    hot = GpuInfo(0, "NVIDIA A10", 24 * 1024**3, 23 * 1024**3, (8, 6), 91)
    report = run_preflight(loaded(tmp_path, "smollm2-135m"), probe=FakeProbe(GpuSnapshot("ok", (hot,))),
                           env=cuda_env())
    check = report.check("gpu")
    assert check is not None and check.status == "warn" and "91 C" in check.fix


def test_lone_phase_that_starts_from_another_is_a_clear_error(tmp_path: Path) -> None:
    import yaml
    from preflight_support import data_file

    from nova.config.load import load_yaml_config
    from nova.errors import NovaError

    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump({"name": "b", "start_from": "a",
                                    "data": {"datasets": [{"path": str(data_file(tmp_path))}]}}))
    with pytest.raises(NovaError, match="pipeline"):
        run_preflight(load_yaml_config(path), probe=no_gpu())


def test_hub_lookup_never_hangs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from nova.preflight import model_source

    def stuck(*args: object, **kwargs: object) -> None:
        time.sleep(5)

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(model_source, "NETWORK_TIMEOUT_S", 0.2)
    monkeypatch.setattr(model_source.urllib.request, "urlopen", stuck)
    start = time.perf_counter()
    source = resolve_model("org/some-model")
    assert time.perf_counter() - start < 2
    assert source.kind == "missing" and "did not answer" in source.message


def test_bf16_on_a_cpu_without_native_bf16_warns() -> None:
    from nova.config.schema import ModelConfig
    from nova.preflight.checks_env import check_precision

    model = ModelConfig(base="x", compute_dtype="bf16")
    assert check_precision(model, None, cpu_bf16=False).status == "warn"
    assert check_precision(model, None, cpu_bf16=True).status == "pass"
    assert check_precision(ModelConfig(base="x"), None, cpu_bf16=False).status == "pass"


def test_dpo_sequence_length_is_capped_by_prompt_and_completion() -> None:
    from nova.config.schema import LoraConfig, ModelConfig
    from nova.methods.dpo import DPOConfig
    from nova.preflight.checks_memory import stage_settings

    stage = StageConfig(method="dpo", dpo=DPOConfig(max_prompt_length=256, max_completion_length=512))
    settings = stage_settings(ModelConfig(base="x"), LoraConfig(), stage, on_gpu=True)
    assert settings.seq_len == 768 and settings.sequences == 2 * stage.training.micro_batch_size
