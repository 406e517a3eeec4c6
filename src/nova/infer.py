"""Inference: load a tuned model (run directory, merged model, or base + adapter) and answer prompts.

A run directory is loaded exactly as it was trained: the same base, quantized the same way,
with every phase's adapter of the chain stacked in order (see nova.model.adapters).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nova.config.schema import ModelConfig
from nova.errors import NovaError
from nova.runs.layout import is_run_dir
from nova.runs.record import AdapterRef, RunRecord, read_run


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    description: str
    has_adapters: bool = False
    run: RunRecord | None = None
    adapter_names: list[str] = field(default_factory=list)  # the stacked chain, oldest first
    system: Any = None  # a run's system prompt (nova.data.system.SystemPrompt); None for a model directory

    def system_messages(self) -> list[dict[str, str]]:
        """What goes before a chat without a system message: the run's system prompt, as it was trained
        (a merged model's chat template carries it itself)."""
        return self.system.messages() if self.system is not None else []

    def base_view(self) -> Any:
        """A context in which the model answers as its base (every adapter off), for --compare."""
        from contextlib import nullcontext

        return self.model.disable_adapter() if self.has_adapters else nullcontext()

    def phase_views(self) -> list[tuple[str, Any]]:
        """(label, context) for the base and every prefix of the chain: the model as each phase left it
        (``--compare-phases``). Each phase is its own adapter, so a prefix is the same loaded model
        with the later adapters switched off."""
        from nova.model.adapters import active_adapters

        views = [("base", lambda: self.base_view())]
        for i, name in enumerate(self.adapter_names):
            views.append((name, lambda upto=i + 1: active_adapters(self.model, self.adapter_names[:upto])))
        return views


def _cut_chain(adapters: list[AdapterRef], upto: str | None) -> list[AdapterRef]:
    """The chain up to and including phase ``upto`` (``--upto``); all of it when None."""
    if upto is None:
        return adapters
    names = [r.name for r in adapters]
    if upto not in names:
        raise NovaError(f"--upto {upto}: no such phase in this run's chain ({', '.join(names)})",
                        hint=f"pass one of: {', '.join(names)}")
    return adapters[: names.index(upto) + 1]


def load_model(path: str | Path, *, adapter: str | Path | None = None, base_only: bool = False,
               quantization: str | None = None, trust_remote_code: bool = False,
               upto: str | None = None) -> LoadedModel:
    """Load a run directory (as trained), a plain model directory, or a base plus ``adapter``.

    ``trust_remote_code`` comes from the caller (the command line) and replaces a run's recorded
    setting: a run directory may come from someone else, and its config.yaml must not be what lets
    a model's code run.
    """
    from nova.model.adapters import activate, stack_frozen
    from nova.model.loading import choose_placement, load_base_model, load_tokenizer, resolve_base

    path = Path(path)
    record: RunRecord | None = None
    if is_run_dir(path):
        from nova.runs.guard import require_finished
        from nova.runs.locate import located_model

        record = read_run(path)
        require_finished(record.run.path, "nova infer", [r.path.parent for r in record.chain])
        model_cfg = located_model(record).changed(trust_remote_code=trust_remote_code)
        if record.full:  # adapter: full: the run's model directory is the tuned model, no adapters
            model_cfg = model_cfg.changed(base=str(record.require_model()), quantization="none", revision=None)
            adapters = []
        else:
            adapters = _cut_chain(record.require_adapters(), upto)
    else:
        if upto is not None:
            raise NovaError("--upto needs a run directory (it names a phase of the run's chain)")
        model_cfg = ModelConfig(base=str(path), quantization="none", trust_remote_code=trust_remote_code)
        adapters = [AdapterRef("adapter", Path(adapter))] if adapter else []
    if quantization is not None:
        model_cfg = model_cfg.changed(quantization=quantization)
    source = resolve_base(model_cfg)
    placement = choose_placement(model_cfg.compute_dtype)
    tokenizer = load_tokenizer(model_cfg, source)
    model = load_base_model(model_cfg, placement, source)
    stacked = bool(adapters) and not base_only
    if stacked:
        model = stack_frozen(model, adapters)
        activate(model, [r.name for r in adapters])
    model.eval()
    names = " + ".join(r.name for r in adapters) if stacked else "no adapter"
    system = None
    if record is not None:
        from nova.data.system import run_system

        system = run_system(record, tokenizer)
    return LoadedModel(model, tokenizer, f"{source} ({model_cfg.quantization}) + {names}", stacked, record,
                       [r.name for r in adapters] if stacked else [], system)


MAX_PROMPTS_BYTES = 64 * 1024 * 1024  # prompts are answered one by one: a bigger file is a mistake
MAX_PROMPT_PROBLEMS = 1000  # enough to see the pattern; reading stops there
_ROLES = ("system", "user", "assistant", "tool")

Conversation = list[dict[str, str]]


def read_prompts_file(path: Path) -> list[Conversation]:
    """JSONL prompts: each line {"prompt": "..."} (optionally with "system") or {"messages": [...]}.

    Read and checked whole before any model loads, so a bad file costs seconds, not a model load;
    every bad line is one problem naming file:line (DataError), the file itself a NovaError.
    """
    from nova.errors import DataError, Problem

    if not path.exists():
        raise NovaError(f"--prompts-file {path} does not exist", hint="check the path")
    if not path.is_file():
        raise NovaError(f"--prompts-file {path} is not a file", hint="pass a .jsonl file, one prompt per line")
    if path.stat().st_size > MAX_PROMPTS_BYTES:
        raise NovaError(f"--prompts-file {path} is larger than {MAX_PROMPTS_BYTES // 2**20} MiB",
                        hint="split it; prompts are answered one at a time")
    try:
        with path.open("rb") as fh:
            lines = fh.read(MAX_PROMPTS_BYTES + 1).split(b"\n")
    except OSError as exc:
        raise NovaError(f"cannot read --prompts-file {path}: {exc.strerror or exc}") from None
    conversations: list[Conversation] = []
    problems: list[Problem] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            conversations.append(_prompt_line(raw.removeprefix(b"\xef\xbb\xbf") if number == 1 else raw))
        except ValueError as exc:
            problems.append(Problem(f"{path}:{number}", str(exc)))
            if len(problems) >= MAX_PROMPT_PROBLEMS:
                problems.append(Problem(str(path), f"stopped reading after {MAX_PROMPT_PROBLEMS} bad lines"))
                break
    if problems:
        raise DataError(f"bad prompts file {path}", problems)
    if not conversations:
        raise DataError(f"bad prompts file {path}", [Problem(str(path), "no prompts in the file")])
    return conversations


def _prompt_line(raw: bytes) -> Conversation:
    """One line as a conversation; ValueError with a one-line reason when it is not one."""
    import json

    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8: byte 0x{raw[exc.start]:02x} at column {exc.start + 1}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise ValueError("nested too deeply to read") from None
    except ValueError:  # Python's int-string limit (sys.get_int_max_str_digits)
        raise ValueError("a number too long to read") from None
    if isinstance(record, dict) and "messages" in record:
        messages = record["messages"]
        if not (isinstance(messages, list) and messages and all(
                isinstance(m, dict) and m.get("role") in _ROLES and isinstance(m.get("content"), str)
                for m in messages)):
            raise ValueError('"messages" must be a non-empty list of {"role": ROLE, "content": TEXT} '
                             f"(roles: {', '.join(_ROLES)})")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    if isinstance(record, dict) and isinstance(record.get("prompt"), str):
        system = record.get("system")
        if system is not None and not isinstance(system, str):
            raise ValueError('"system" must be text')
        head = [{"role": "system", "content": system}] if system else []
        return [*head, {"role": "user", "content": record["prompt"]}]
    raise ValueError('expected {"prompt": TEXT} or {"messages": [...]}')


def eval_loss(loaded: LoadedModel) -> list[dict[str, Any]]:
    """Holdout loss and perplexity of a run, per SFT stage (a method that learns its data's tokens), on the same
    eval split training used."""
    import math

    from nova.data import prepare_stage_data
    from nova.model.evaluate import holdout_loss

    if loaded.run is None:
        raise NovaError("--eval needs a run directory (it re-creates the run's holdout split)")
    results = []
    for index, stage in enumerate(loaded.run.phase.stages):
        if not stage.spec.trains_sequences:
            continue
        prepared = prepare_stage_data(stage.data, loaded.tokenizer, method=stage.method, seed=stage.training.seed)
        if prepared.eval is None or len(prepared.eval) == 0:
            continue
        scored = holdout_loss(loaded.model, prepared.eval, loaded.tokenizer.pad_token_id)
        if scored is None:
            continue
        results.append({"stage": index + 1, "method": stage.method, "examples": scored.examples,
                        "tokens": scored.tokens, "eval_loss": scored.eval_loss,
                        "perplexity": math.exp(scored.eval_loss)})
    if not results:
        raise NovaError("the run has no SFT holdout to evaluate", hint="set data.eval_split > 0 in its config")
    return results
