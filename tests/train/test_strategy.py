"""The distributed engine and its settings, generated from nova's config (FSDP and DeepSpeed need GPUs to run)."""

from __future__ import annotations

import pytest

from nova.config.schema import DistributedConfig, ModelConfig, StageConfig
from nova.errors import NovaError
from nova.train.machinery.strategy import deepspeed_config, resolve, strategy_for

MODEL = ModelConfig(base="m", quantization="nf4")


def stage(**training: object) -> StageConfig:
    return StageConfig.model_validate({"training": training})


def test_one_process_is_single_and_auto_picks_ddp_unless_a_replica_does_not_fit() -> None:
    cfg = DistributedConfig()
    assert resolve(cfg, 1, None) == "single"
    assert resolve(cfg, 2, True) == "ddp" and resolve(cfg, 2, None) == "ddp"
    assert resolve(cfg, 2, False) == "fsdp"
    assert resolve(DistributedConfig(strategy="deepspeed"), 4, True) == "deepspeed"


def test_ddp_arguments() -> None:
    s = strategy_for(DistributedConfig(timeout_s=90), 2, MODEL, stage(), cuda=False, bf16=False, fp16=False)
    assert s.name == "ddp" and not s.shards_weights
    assert s.args == {"ddp_timeout": 90, "ddp_backend": "gloo", "ddp_find_unused_parameters": False}


def test_fsdp_shards_every_layer_and_saves_the_adapter_whole() -> None:
    s = strategy_for(DistributedConfig(strategy="fsdp"), 8, MODEL, stage(gradient_checkpointing=True), cuda=True,
                     bf16=True, fp16=False)
    assert s.shards_weights and s.args["ddp_backend"] == "nccl"
    fsdp = s.args["fsdp_config"]
    assert s.args["fsdp"] is True and fsdp["version"] == 2
    assert fsdp["state_dict_type"] == "FULL_STATE_DICT" and fsdp["cpu_ram_efficient_loading"]
    assert fsdp["activation_checkpointing"] and s.args["gradient_checkpointing"] is False


@pytest.mark.parametrize(("method", "optimizer", "quant", "match"), [
    ("dpo", "adamw_torch", "nf4", "DPO on a 4-bit base"),
    ("sft", "paged_adamw_8bit", "nf4", "paged"),
    ("sft", "adamw_torch", "int8", "int8"),
])
def test_known_broken_fsdp_combinations_are_refused(method: str, optimizer: str, quant: str, match: str) -> None:
    with pytest.raises(NovaError, match=match):
        strategy_for(DistributedConfig(strategy="fsdp"), 2, ModelConfig(base="m", quantization=quant),
                     StageConfig.model_validate({"method": method, "training": {"optimizer": optimizer}}),
                     cuda=True, bf16=True, fp16=False)


def test_deepspeed_config_follows_the_stage() -> None:
    cfg = deepspeed_config(DistributedConfig(strategy="deepspeed", zero_stage=3),
                           stage(micro_batch_size=2, gradient_accumulation_steps=8, max_grad_norm=0.5),
                           bf16=True, fp16=False)
    assert cfg["train_micro_batch_size_per_gpu"] == 2 and cfg["gradient_accumulation_steps"] == 8
    assert cfg["gradient_clipping"] == 0.5 and cfg["bf16"] == {"enabled": True}
    assert cfg["zero_optimization"]["stage"] == 3
    assert cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]


def test_a_pipeline_phase_may_not_set_its_own_distributed_section() -> None:
    from nova.config.schema import PipelineConfig

    with pytest.raises(ValueError, match="pipeline's own distributed section"):
        PipelineConfig.model_validate({"phases": [{"name": "a", "model": {"base": "m"},
                                                   "distributed": {"gpus": "all"}}]})
