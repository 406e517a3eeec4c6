"""Padding-free packing is exact, the loss is computed only where it is trained, and token budgets hold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT
from nova.train.machinery.batching import IGNORE, SFTCollator, TokenBudgetBatchSampler, packing_is_exact
from nova.train.methods.loss import sft_loss


def _model(model_dir: Path, attn: str) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from nova.model.attention import register_varlen_sdpa

    register_varlen_sdpa()
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation=attn)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    for name, p in model.named_parameters():  # nonzero B: gradients reach A through every layer
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    model.train()
    return model


def _examples() -> list[dict[str, list[int]]]:
    import random

    rng = random.Random(1)
    out = []
    for n, prompt in ((9, 4), (14, 6), (6, 2)):
        ids = [rng.randrange(3, 400) for _ in range(n)]  # below the tiny vocabulary (471)
        out.append({"input_ids": ids, "labels": [IGNORE] * prompt + ids[prompt:]})
    return out


def _loss_and_grads(model: Any, batch: dict[str, Any], count: int) -> tuple[float, dict[str, Any]]:
    model.zero_grad()
    loss = sft_loss(model, batch, count)
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_collator_marks_first_labels_and_restarts_positions() -> None:
    feats = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [IGNORE, 9]}]
    packed = SFTCollator(pad_token_id=0, padding_free=True)(feats)
    assert packed["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert packed["labels"].tolist() == [[IGNORE, 6, 7, IGNORE, 9]] and "attention_mask" not in packed
    padded = SFTCollator(pad_token_id=0, padding_free=False)(feats)
    assert padded["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert padded["labels"].tolist() == [[IGNORE, 6, 7], [IGNORE, 9, IGNORE]]
    assert padded["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


@pytest.mark.parametrize(("attn", "row_cap"), [("sdpa", None), ("eager", None), ("sdpa", 16),
                                              ("nova_sdpa_varlen", None), ("nova_sdpa_varlen", 16)])
def test_packed_losses_and_gradients_equal_one_by_one(tiny_model_dir: Path, attn: str, row_cap: int | None) -> None:
    import torch

    model = _model(tiny_model_dir, attn)
    examples = _examples()
    total = sum(sum(1 for t in e["labels"][1:] if t != IGNORE) for e in examples)
    packed = SFTCollator(0, True, row_cap)(examples)
    assert packed["input_ids"].shape[0] == (1 if row_cap is None else 2)  # 9 + 14 + 6 tokens, rows of <= 16
    packed_loss, packed_grads = _loss_and_grads(model, packed, total)
    padded_loss, padded_grads = _loss_and_grads(model, SFTCollator(0, False)(examples), total)
    # one by one, each normalized by the same total: their sum is the batch's loss and gradient
    singles = [_loss_and_grads(model, SFTCollator(0, False)([e]), total) for e in examples]
    single_loss = sum(s[0] for s in singles)
    assert packed_loss == pytest.approx(single_loss, rel=1e-5) and padded_loss == pytest.approx(single_loss, rel=1e-5)
    for name, grad in packed_grads.items():
        summed = sum(s[1][name] for s in singles)
        torch.testing.assert_close(grad, summed, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(padded_grads[name], summed, rtol=1e-4, atol=1e-6)
    assert packing_is_exact(model, model.config.vocab_size, "float32")[0]


def test_sdpa_becomes_per_sequence_sdpa_with_one_row_and_eager_keeps_capped_rows(tiny_model_dir: Path) -> None:
    from types import SimpleNamespace

    from nova.config.schema import TrainingConfig
    from nova.model.loading import choose_placement
    from nova.train.methods.sft import choose_batching

    stage = SimpleNamespace(training=TrainingConfig(), data=SimpleNamespace(max_length=64))
    sdpa = choose_batching(_model(tiny_model_dir, "sdpa"), stage, None, choose_placement("fp32"))
    assert sdpa.padding_free and sdpa.max_row_tokens is None and "per-sequence SDPA" in sdpa.note
    eager_model = _model(tiny_model_dir, "eager")
    eager = choose_batching(eager_model, stage, None, choose_placement("fp32"))
    assert eager.padding_free and eager.max_row_tokens == 64 and "block-diagonal" in eager.note
    assert eager_model.config._attn_implementation == "eager"


def test_rows_are_split_at_the_cap_and_padding_is_its_own_block() -> None:
    feats = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]},
             {"input_ids": [4], "labels": [4]}]
    out = SFTCollator(pad_token_id=0, padding_free=True, max_row_tokens=4)(feats)
    assert out["input_ids"].tolist() == [[5, 6, 7, 4], [8, 9, 0, 0]]  # longest first, first fit
    assert out["position_ids"].tolist() == [[0, 1, 2, 0], [0, 1, 0, 1]]
    assert out["labels"].tolist() == [[IGNORE, 6, 7, IGNORE], [IGNORE, 9, IGNORE, IGNORE]]


def test_the_loss_equals_the_models_own_loss(tiny_model_dir: Path) -> None:
    """Scoring only the trained positions changes nothing: the same mean NLL as the full-logits path."""
    model = _model(tiny_model_dir, "sdpa")
    batch = SFTCollator(0, False)(_examples())
    ours = sft_loss(model, batch)
    theirs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)


def test_the_probe_catches_a_model_that_lets_packed_sequences_see_each_other(
        tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers.masking_utils as masking

    model = _model(tiny_model_dir, "sdpa")
    monkeypatch.setattr(masking, "find_packed_sequence_indices", lambda position_ids: None)  # boundaries ignored
    exact, diff = packing_is_exact(model, model.config.vocab_size, "float32")
    assert not exact and diff > 1e-3


def _run(tmp: Path, model: Path, name: str, dtype: str = "fp32", **training: Any) -> Path:
    import yaml

    from nova.config import load_yaml_config
    from nova.console import RunLog
    from nova.train.pipeline import run_config

    cfg = {"name": name, "model": {"base": str(model), "quantization": "none", "compute_dtype": dtype},
           "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
           "data": {"datasets": [{"path": str(ROOT / "data" / "sora_en.jsonl"), "max_samples": 16}],
                    "eval_split": 0.0, "max_length": 128},
           "training": {"max_steps": 2, "learning_rate": 1e-2, "lr_scheduler": "constant", "warmup_steps": 0,
                        "logging_steps": 1, "save_steps": 100, "gradient_checkpointing": False, "seed": 5,
                        **training},
           "output_dir": str(tmp / name), "logs_dir": str(tmp / "logs")}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_config(load_yaml_config(path), log=RunLog(tmp / f"{name}.log"))
    return tmp / name


def _adapter(run: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def _assert_same_training(a: dict[str, Any], b: dict[str, Any], dtype: str) -> None:
    """Two runs that must train the same adapter. fp32: equal to float tolerance. bf16: equal within what bf16's
    rounding of other batch layouts leaves: LoRA B (it starts at zero, so it is the update itself) within 6%
    relative norm. Measured on the tiny model: 1.7-3.1% between the layouts compared here, 9.7% for a
    learning rate 10% higher (bf16 and fp32 alike), so the bound still tells a different run apart."""
    import torch

    if dtype == "fp32":
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
        return
    keys = [k for k in a if "lora_B" in k]
    diff = sum(float((a[k] - b[k]).float().norm()) ** 2 for k in keys) ** 0.5
    size = sum(float(a[k].float().norm()) ** 2 for k in keys) ** 0.5
    assert keys and diff < 0.06 * size, f"LoRA B differs by {diff / size:.1%}"


@pytest.mark.trains
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("packing", ["padding_free", "pad"])
def test_micro_batch_1_x_accumulation_4_equals_4_x_1(tiny_model_dir: Path, tmp_path: Path, packing: str,
                                                      dtype: str) -> None:
    one = _run(tmp_path, tiny_model_dir, "one", dtype, micro_batch_size=1, gradient_accumulation_steps=4,
               packing=packing)
    four = _run(tmp_path, tiny_model_dir, "four", dtype, micro_batch_size=4, gradient_accumulation_steps=1,
                packing=packing)
    _assert_same_training(_adapter(one), _adapter(four), dtype)
    rows = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in rows)
    expected = "padding-free packing" if packing == "padding_free" else "padded batches"
    assert expected in (tmp_path / "one.log").read_text()


@pytest.mark.trains
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_packed_and_padded_runs_train_the_same_adapter(tiny_model_dir: Path, tmp_path: Path, dtype: str) -> None:
    packed = _run(tmp_path, tiny_model_dir, "packed", dtype, micro_batch_size=4, gradient_accumulation_steps=1)
    padded = _run(tmp_path, tiny_model_dir, "padded", dtype, micro_batch_size=4, gradient_accumulation_steps=1,
                  packing="pad")
    _assert_same_training(_adapter(packed), _adapter(padded), dtype)


@pytest.mark.trains
def test_a_learning_rate_10_percent_higher_is_not_the_same_training(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The bf16 bound of _assert_same_training tells a different run apart."""
    base = _run(tmp_path, tiny_model_dir, "base", "bf16", micro_batch_size=4, gradient_accumulation_steps=1)
    higher = _run(tmp_path, tiny_model_dir, "higher", "bf16", micro_batch_size=4, gradient_accumulation_steps=1,
                  learning_rate=1.1e-2)
    with pytest.raises(AssertionError, match="LoRA B differs"):
        _assert_same_training(_adapter(base), _adapter(higher), "bf16")


def test_token_budget_batches_fit_and_cover_every_example() -> None:
    lengths = [5, 40, 12, 33, 7, 90, 21, 3, 64, 18] * 5
    for padding_free in (True, False):
        sampler = TokenBudgetBatchSampler(lengths, 100, seed=3, padding_free=padding_free)
        first = list(sampler)
        sampler.set_epoch(1)
        second = list(sampler)
        assert len(first) == len(second) == len(sampler) and first != second  # same batches, new order
        assert sorted(i for b in first for i in b) == list(range(len(lengths)))
        for batch in first:
            cost = sum(lengths[i] for i in batch) if padding_free else max(lengths[i] for i in batch) * len(batch)
            assert cost <= 100 or len(batch) == 1
    assert TokenBudgetBatchSampler(lengths, 100, seed=3, padding_free=True).summary()["sequences_per_batch_mean"] > 1


@pytest.mark.trains
def test_a_token_budget_run_trains_and_says_how(tiny_model_dir: Path, tmp_path: Path) -> None:
    run = _run(tmp_path, tiny_model_dir, "budget", micro_batch_size=4, gradient_accumulation_steps=1,
               max_tokens_per_batch=256)
    assert (run / "COMPLETE").exists()
    assert "micro batches of up to 256 tokens" in (tmp_path / "budget.log").read_text()


def test_the_dpo_head_scores_only_trained_positions_with_the_same_log_probs(
        tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    import trl.trainer.utils as trl_utils
    from transformers import AutoModelForCausalLM

    from nova.train.methods.reference import score_trained_positions_only

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    trl_utils.add_fused_lm_head(model)
    ids = torch.randint(3, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :8] = IGNORE  # a prompt of 8 tokens
    rows: list[int] = []
    real_apply = trl_utils._ChunkedLogProbFunction.apply

    def counting(hidden, *args):  # type: ignore[no-untyped-def]
        rows.append(hidden.shape[0])
        return real_apply(hidden, *args)

    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", counting)
    from trl.kernels import chunked_logprob

    # TRL's own rule (an earlier DPO stage in this process may have switched it already); restored after
    monkeypatch.setattr(trl_utils, "_use_triton", chunked_logprob._use_triton)
    with torch.no_grad():
        every = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs
        score_trained_positions_only()
        trained = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs
    assert rows == [2 * 11, 2 * 4]  # every shifted position, then only the trained ones
    torch.testing.assert_close(every, trained, rtol=1e-5, atol=1e-6)
