"""The typed schema of nova's YAML configs.

One schema, validated once, then frozen. Each field is documented here and only here (a method's
settings section in its module of ``nova.methods``): the ``nova config`` reference and
``docs/config.md`` are generated from these descriptions. Each stage's keys are spelled once, in
``StageConfig``; a phase of one stage may write them at the phase level, where they are read as
``stages[0]``.
Derived values (effective batch size, the run directory, the list of stages) are properties,
never edits made after validation.

Relative paths in a config are relative to the directory ``nova`` runs in (the project root),
like axolotl and LLaMA-Factory; only a pipeline's ``phases:`` file references are relative to
the pipeline file, because they are includes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, create_model, model_validator

from nova.config.base import MAX_BATCH, MAX_STEPS, Section
from nova.config.data_schema import DataConfig
from nova.config.eval_schema import EvalConfig
from nova.config.full_rules import check_chain_kinds, check_full_phase
from nova.config.monitor_schema import MonitorConfig
from nova.errors import printable
from nova.methods import Method, MethodSpec, all_specs, method_spec, with_section

Quantization = Literal["nf4", "fp4", "int8", "none"]
ComputeDtype = Literal["auto", "bf16", "fp16", "fp32"]
Adapter = Literal["lora", "full"]  # what a phase trains (nova.config.full_rules)


class ModelConfig(Section):
    """The base model and how it is loaded."""

    base: str = Field(
        description="Hugging Face hub id, local model directory, or a .gguf file (imported on the fly).")
    quantization: Quantization = Field(
        "nf4", description="Base weights: 4-bit nf4 or fp4 (QLoRA), 8-bit, or 'none' for plain LoRA.")
    double_quant: bool = Field(True, description="Quantize the 4-bit quantization constants too (QLoRA).")
    compute_dtype: ComputeDtype = Field(
        "auto", description="Matmul dtype: 'auto' picks bf16 on GPUs that support it, fp16 on older GPUs; on "
        "CPUs bf16 with native bf16 instructions (AVX512-BF16/AMX), else fp32 (see docs/benchmarks.md).")
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="Attention kernel; 'auto' lets transformers choose (sdpa where available).")
    trust_remote_code: bool = Field(False, description="Allow model code from the hub (only for models you trust).")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of the base model.")
    chat_template: str | None = Field(
        None, description="Path to a Jinja chat template that replaces the tokenizer's own.")
    models_dir: str = Field("models", description="Where a .gguf base is imported to as a HF model directory.")


class LoraConfig(Section):
    """The LoRA adapter trained on top of the (frozen, possibly quantized) base."""

    r: int = Field(8, gt=0, le=4096, description="Adapter rank.")
    alpha: int = Field(
        16, gt=0, le=MAX_BATCH, description="Scaling numerator: updates are scaled by alpha / r (usually 2 x r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or 'all-linear' (every linear layer but lm_head).")
    use_rslora: bool = Field(False, description="Rank-stabilized scaling alpha / sqrt(r) instead of alpha / r.")


class TrainingConfig(Section):
    """Optimizer, schedule, batch, evaluation and checkpointing for one stage."""

    max_steps: int | None = Field(
        None, gt=0, le=MAX_STEPS, description="Optimizer steps; when unset, num_epochs decides.")
    num_epochs: float = Field(
        1.0, gt=0, le=10_000, description="Passes over the training data (used when max_steps is unset).")
    micro_batch_size: int = Field(4, gt=0, le=MAX_BATCH, description="Sequences per forward pass on one device.")
    gradient_accumulation_steps: int = Field(4, gt=0, le=MAX_BATCH, description="Micro batches per optimizer step.")
    learning_rate: float = Field(2e-4, gt=0, le=1, description="Peak learning rate (LoRA: 1e-4 to 3e-4 is typical; "
                                 "adapter: full: 1e-5 to 5e-5).")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule after warmup.")
    warmup_steps: int | None = Field(
        None, ge=0, le=MAX_STEPS, description="Warmup steps; when unset, warmup_ratio decides.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Warmup as a fraction of all steps.")
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay.")
    optimizer: Literal["adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"] = Field(
        "adamw_torch", description="Optimizer; the 8-bit and paged ones come from bitsandbytes (0.50 runs them on "
        "a CPU too, the paged ones unpaged there).")
    max_grad_norm: float = Field(1.0, gt=0, le=1_000_000, description="Gradient clipping norm.")
    gradient_checkpointing: bool = Field(
        True, description="Recompute activations in backward: much less memory, about 30% slower.")
    packing: Literal["auto", "padding_free", "pad"] = Field(
        "auto", description="SFT micro batches: 'padding_free' concatenates a micro batch's sequences into one row "
        "with attention kept inside each sequence (no compute on padding; checked exact on the model at the start "
        "of the stage), 'pad' pads them to the longest, 'auto' packs where the check passes and pads otherwise. "
        "DPO always pads (TRL 1.x).")
    max_tokens_per_batch: int | None = Field(
        None, gt=0, le=10_000_000, description="Fill each SFT micro batch up to this many tokens instead of "
        "micro_batch_size sequences (throughput and memory then do not depend on the longest sample); the loss is "
        "still normalized by trained tokens, so a step weighs every token the same.")
    group_by_length: bool = Field(
        False, description="Padded SFT batches only: put sequences of similar length together (less padding).")
    liger_kernels: bool = Field(
        False, description="CUDA only: Liger's fused RMSNorm, RoPE and SwiGLU kernels (pip install "
        "'nova-tune[liger]'); nova's own loss already skips untrained positions. Off unless measured to help "
        "on your GPU (docs/benchmarks.md).")
    torch_compile: bool = Field(
        False, description="Compile the model with torch.compile (slow first steps; can help long runs on a GPU).")
    logging_steps: int = Field(
        10, gt=0, le=MAX_STEPS, description="Log loss, learning rate and throughput every N steps.")
    eval_steps: int = Field(100, gt=0, le=MAX_STEPS, description="Evaluate on the holdout every N steps.")
    save_steps: int = Field(100, gt=0, le=MAX_STEPS, description="Write a checkpoint every N steps.")
    save_total_limit: int = Field(
        3, gt=0, le=10_000, description="Keep the last K checkpoints (the newest is never deleted).")
    seed: int = Field(42, ge=0, le=2**32 - 1, description="Seed for weights init, data order and holdout split.")
    auto_fit: bool = Field(
        False, description="Let preflight choose micro batch, accumulation and checkpointing to fit the GPU, "
        "keeping the effective batch size; the choice is recorded in the run directory.")
    oom_retries: int = Field(
        2, ge=0, le=20, description="On CUDA out-of-memory: halve micro batch, double accumulation, turn on "
        "checkpointing and resume from the last checkpoint, up to this many times.")
    report_to: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=list, description="Also log to TensorBoard and/or Weights & Biases (optional extras: "
        "pip install 'nova-tune[tensorboard]' or '[wandb]'); metrics.jsonl is always written.")
    gpu: Literal["auto"] | Annotated[int, Field(ge=0, le=1023)] = Field(
        "auto", description="GPU index to train on; 'auto' picks the one with the most free memory.")

    @property
    def effective_batch_size(self) -> int:
        """Sequences per optimizer step on one device."""
        return self.micro_batch_size * self.gradient_accumulation_steps


class DistributedConfig(Section):
    """Several GPUs or machines: how many ranks, and the engine that splits the work (docs/distributed.md)."""

    gpus: Literal["one", "all"] | Annotated[int, Field(ge=1, le=1024)] = Field(
        "one", description="Ranks nova train starts on this machine when --nproc-per-node is not given: 'one' "
        "(the GPU with the most free memory), 'all' (every visible GPU), or a number.")
    strategy: Literal["auto", "ddp", "fsdp", "deepspeed"] = Field(
        "auto", description="'ddp': a full (4-bit) replica per GPU, gradients all-reduced; 'fsdp': weights, "
        "gradients and optimizer states sharded (FSDP2, QLoRA-aware); 'deepspeed': ZeRO (pip install "
        "'nova-tune[deepspeed]'); 'auto': ddp when preflight says a replica fits each GPU, else fsdp.")
    zero_stage: Literal[2, 3] = Field(2, description="DeepSpeed ZeRO stage (strategy: deepspeed).")
    timeout_s: int = Field(
        600, ge=10, le=86_400, description="Seconds a rank waits in a collective before the run stops: a rank "
        "that dies ends the run with a message instead of leaving the others waiting.")


class _Stage(Section):
    """One training stage of a phase, with its own method, data and schedule; StageConfig adds the method
    sections (dpo:, kto:, ...) from the registry (nova.methods)."""

    method: Method = Field("sft", description="Training method of this stage (docs/methods.md): " + "; ".join(
        f"'{s.name}': {s.summary}" for s in all_specs()) + ".")
    data: DataConfig = Field(default_factory=DataConfig, description="Data of this stage.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Schedule of this stage.")

    @model_validator(mode="after")
    def _method_fits_batch(self, info: ValidationInfo) -> _Stage:
        # The batch rules live here only. Not for a config read back or changed by nova itself (OOM retry,
        # auto-fit, a resume on other ranks): those keep the effective batch and stay at min_micro_batch.
        if not (info.context and info.context.get("recorded")):
            t = self.training
            problem = self.spec.batch_problem(self.method_settings, t.micro_batch_size, t.gradient_accumulation_steps)
            if problem is not None:
                raise ValueError(problem)
        return self

    @property
    def spec(self) -> MethodSpec:
        """What nova knows about this stage's method (nova.methods)."""
        return method_spec(self.method)

    @property
    def method_settings(self) -> Any:
        """The settings section of this stage's method (None for a method without one, sft)."""
        return getattr(self, self.method) if self.spec.section is not None else None

    @property
    def min_micro_batch(self) -> int:
        """The smallest micro batch the method works with (auto-fit and OOM retries stay at or above it)."""
        return self.spec.min_micro_batch(self.method_settings)

    @property
    def length_settings(self) -> Any:
        """Where the data's prompt/reply token limits come from (None for SFT: its data does not use them)."""
        return self.method_settings if self.spec.cuts_prompts else None


def _section_field(spec: MethodSpec) -> tuple[Any, Any]:
    doc = (spec.section.__doc__ or "").split("\n\n")[0].replace("``", "")
    return spec.section, Field(default_factory=spec.section, description=" ".join(doc.split()))


# The method sections come from the registry: a new method's section is a key of every stage without an
# edit here (nova.methods; docs/architecture.md, "A training method").
StageConfig = create_model("StageConfig", __base__=_Stage, __module__=__name__,
                           **{s.name: _section_field(s) for s in with_section()})  # type: ignore[call-overload]
STAGE_KEYS = frozenset(StageConfig.model_fields)


class RetentionConfig(Section):
    """Keeping what earlier phases taught (docs/forgetting.md); opt-in per phase, for a phase that
    starts from an earlier one."""

    replay: float = Field(
        0.0, ge=0, le=0.9, description="Share of every SFT stage's training mix drawn from the earlier phases' "
        "SFT training data (0.25: a quarter of the sequences), encoded as those phases trained them, seeded and "
        "counted in the data report. Costs that share of extra training tokens.")
    kl_weight: float = Field(
        0.0, ge=0, le=100, description="Weight of a KL term toward the phase's start composition on the replayed "
        "sequences (needs replay > 0): the same model with this phase's adapter off runs once more without "
        "gradients on batches holding replayed sequences, so those batches cost about 1.3x.")

    @model_validator(mode="after")
    def _kl_needs_replay(self) -> RetentionConfig:
        if self.kl_weight > 0 and self.replay <= 0:
            raise ValueError("retention.kl_weight is applied to replayed sequences: set retention.replay > 0 too")
        return self


class PhaseConfig(Section):
    """A training phase: one adapter trained from a starting point by one or more stages."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$",
                      description="Phase name (letters, digits, _ and -); names the run directory and the adapter.")
    model: ModelConfig | None = Field(
        None, description="Base model; required unless start_from is set (then the earlier phase's model is used).")
    start_from: str | None = Field(
        None, description="Name of an earlier phase of the same pipeline whose adapter this phase builds on.")
    adapter: Adapter = Field(
        "lora", description="What the phase trains: 'lora' (an adapter on the frozen, possibly quantized base) or "
        "'full' (every weight, as fp32 master weights computed in the compute dtype; needs model.quantization: "
        "none, has no lora section, and leaves a standard model directory; see docs/methods.md).")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="Adapter of this phase (adapter: lora).")
    stages: list[StageConfig] = Field(
        default_factory=lambda: [StageConfig()], min_length=1, description="The stages in order (e.g. sft then "
        "dpo), each with its method, data, schedule and method settings. A phase of one stage may give that "
        "stage's keys (method, data, training and the method's section) at the phase level instead: they are read "
        "as stages[0].")
    output_dir: str | None = Field(
        None, description="Run directory; default checkpoints/<name> (in a pipeline: <pipeline output_dir>/<name>).")
    logs_dir: str = Field("logs", description="Where the console log of each run is copied.")
    monitor: MonitorConfig = Field(default_factory=MonitorConfig, description="Alerts, early stopping, plots.")
    retention: RetentionConfig = Field(
        default_factory=RetentionConfig, description="Replay of earlier phases' data and a KL term toward the "
        "start, against forgetting (needs start_from).")
    smoke_prompts: list[str] = Field(
        default_factory=list, description="Prompts answered by the tuned model at the end of training.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Tasks scored when the phase finishes, and "
                             "limits that stop a pipeline (docs/eval.md).")
    distributed: DistributedConfig = Field(
        default_factory=DistributedConfig, description="Several GPUs or machines (a phase file run on its own; "
        "in a pipeline the pipeline's distributed section applies to every phase).")

    @model_validator(mode="before")
    @classmethod
    def _single_stage(cls, data: Any) -> Any:
        """A phase of one stage written at the phase level is that stage: ``stages[0]``."""
        if not isinstance(data, dict):
            return data
        single = [k for k in data if k in STAGE_KEYS]
        given = data.get("stages") not in (None, [])  # a run's older config.yaml wrote stages: [] beside them
        if single and given:
            raise ValueError(f"give either 'stages' or {sorted(single)} at the phase level, not both")
        if given:
            return data
        rest = {k: v for k, v in data.items() if k not in STAGE_KEYS and k != "stages"}
        return {**rest, "stages": [{k: data[k] for k in single}]}

    @model_validator(mode="after")
    def _phase_rules(self) -> PhaseConfig:
        if self.name in ("default", "stage_start"):
            raise ValueError(f"phase name '{self.name}' is reserved (nova uses it for adapters); choose another")
        if self.model is None and self.start_from is None:
            raise ValueError("a phase needs 'model' (with 'base') or 'start_from'")
        if self.retention.replay > 0 and self.start_from is None:
            raise ValueError("retention.replay mixes in earlier phases' data, but this phase has no start_from")
        return self

    @model_validator(mode="after")
    def _full_fits(self) -> PhaseConfig:
        check_full_phase(self)
        return self

    @property
    def stage_list(self) -> list[StageConfig]:
        """The stages to run, in order."""
        return list(self.stages)

    @property
    def run_dir(self) -> Path:
        """Where this phase writes when it runs on its own."""
        return Path(self.output_dir or f"checkpoints/{self.name}")


class PipelineConfig(Section):
    """An ordered list of phases, each starting from the base or from an earlier phase."""

    output_dir: str = Field("checkpoints/pipeline", description="Each phase writes <output_dir>/<phase>/.")
    phases: list[PhaseConfig] = Field(min_length=1, description="Phases in order (inline, or paths to phase files).")
    distributed: DistributedConfig = Field(
        default_factory=DistributedConfig, description="Several GPUs or machines, for every phase of the pipeline.")

    @model_validator(mode="after")
    def _chain_is_consistent(self) -> PipelineConfig:
        seen: list[str] = []
        for phase in self.phases:
            if "distributed" in phase.model_fields_set:
                raise ValueError(f"phase '{phase.name}' sets 'distributed'; in a pipeline the pipeline's own "
                                 "distributed section applies to every phase (move it there)")
            if phase.name in seen:
                raise ValueError(f"phase name '{phase.name}' is used twice")
            if phase.start_from is not None and phase.start_from not in seen:
                where = f"earlier phases: {', '.join(seen)}" if seen else "it is the first phase"
                raise ValueError(f"phase '{phase.name}' starts from '{printable(phase.start_from)}', which is not "
                                 f"an earlier phase ({where})")
            if phase.start_from is not None:
                check_chain_kinds(self, phase)
            if phase.start_from is not None and phase.model is not None:
                source = self.model_for(phase.start_from)
                if phase.model != source:
                    raise ValueError(
                        f"phase '{phase.name}' sets 'model' differently from '{phase.start_from}', which it starts "
                        "from; a chain shares one base model (remove 'model' from the later phase)")
            seen.append(phase.name)
        return self

    def last_full(self, name: str) -> str | None:
        """The latest phase of ``name``'s chain (``name`` excluded) that was fully fine-tuned: its output
        model is the base the later phases start from."""
        for phase in reversed(self.chain(name)[:-1]):
            if phase.adapter == "full":
                return phase.name
        return None

    def model_for(self, name: str) -> ModelConfig:
        """The base model of a phase, following start_from back to the phase that names it."""
        phase = self.phase(name)
        while phase.model is None:
            assert phase.start_from is not None  # guaranteed by PhaseConfig validation
            phase = self.phase(phase.start_from)
        return phase.model

    def chain(self, name: str) -> list[PhaseConfig]:
        """The phases whose adapters a phase builds on, oldest first, ending with the phase itself."""
        out = [self.phase(name)]
        while out[0].start_from is not None:
            out.insert(0, self.phase(out[0].start_from))
        return out

    def phase(self, name: str) -> PhaseConfig:
        for p in self.phases:
            if p.name == name:
                return p
        raise KeyError(name)

    def phase_dir(self, name: str) -> Path:
        return Path(self.output_dir) / name
