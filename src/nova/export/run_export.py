"""``nova export --run``: a run's adapter chain in the formats other tools load, checked against the run.

Every format carries, or names, the base its adapter belongs to (nova.export.run_source), and is
run after writing (nova.export.parity) against the trained composition of the run:
- ``ollama``: the base as GGUF (the dequantized trained-on weights of a QLoRA run) + the chain as a
  GGUF LoRA + a Modelfile (TEMPLATE, SYSTEM, stops); llama.cpp runs base + LoRA for the check;
- ``gguf``: the chain as a GGUF LoRA file, and beside it (``<name>-base-<type>.gguf``) the base it
  belongs to when that is not the original base (a QLoRA run); ``<name>.nova_export.json`` records
  both and the check;
- ``peft``: one standalone PEFT adapter; transformers + PEFT load it over the base quantized as in
  training for the check (that is the composition it equals).
Nothing is kept when the check fails (``--no-check`` skips it, and the record says so).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nova import __version__
from nova.errors import NovaError
from nova.export.gguf_export import EXPORT_INFO, ExportResult, check_supported, write_gguf
from nova.export.parity import Parity, llama_cpp_logits, measure, require_llama_cpp, skipped, vs_trained
from nova.export.run_source import (
    RunSource,
    Say,
    base_note,
    exact_inputs,
    full_precision_base,
    open_run,
    trained_logits,
)
from nova.files import (
    atomic_dir,
    check_output_dir,
    clean_stale_siblings,
    dir_size,
    portable_path,
    replace_path,
    temp_sibling,
)

BASE_FROM = ("dequantized", "original")


@dataclass(frozen=True)
class RunExportRequest:
    """What ``nova export --run`` was asked to do."""

    run_dir: Path
    out: Path
    fmt: str  # peft, gguf or ollama
    outtype: str | None = None
    force: bool = False
    base_from: str | None = None  # None: dequantized (the weights the chain was trained on)
    check: bool = True


def _quiet(_: str) -> None:
    """The default ``say``: a library call prints nothing unless asked."""


def export_run(request: RunExportRequest, say: Say = _quiet) -> ExportResult:
    """Export a finished run in ``request.fmt``; the parity check runs before anything is kept."""
    if request.base_from not in (None, *BASE_FROM):
        raise NovaError(f"--from must be dequantized or original, got '{request.base_from}'")
    if request.fmt == "peft" and request.base_from is not None:
        raise NovaError("--from does not apply to --format peft: the adapter is loaded over the base as the user has "
                        "it; its card says how to load that base as trained", hint="leave out --from")
    if request.check and request.fmt != "peft":
        require_llama_cpp(request.outtype)
    run = open_run(request.run_dir)
    if request.fmt == "peft":
        return _peft(run, request, say)
    if request.fmt == "gguf":
        return _lora_file(run, request, say)
    return _ollama(run, request, say)


def export_ollama_run(run_dir: str | Path, out_dir: str | Path, *, outtype: str | None = None, force: bool = False,
                      base_from: str | None = None, check: bool = True) -> ExportResult:
    """``nova export --run RUN_DIR --format ollama``."""
    return export_run(RunExportRequest(Path(run_dir), Path(out_dir), "ollama", outtype, force, base_from, check))


def export_lora_gguf(run_dir: str | Path, out_file: str | Path, *, outtype: str = "f16", force: bool = False,
                     base_from: str | None = None, check: bool = True) -> ExportResult:
    """``nova export --run RUN_DIR --format gguf``."""
    return export_run(RunExportRequest(Path(run_dir), Path(out_file), "gguf", outtype, force, base_from, check))


def export_peft(run_dir: str | Path, out_dir: str | Path, *, force: bool = False, check: bool = True) -> ExportResult:
    """``nova export --run RUN_DIR --format peft``."""
    return export_run(RunExportRequest(Path(run_dir), Path(out_dir), "peft", None, force, None, check))


def _kind(run: RunSource, request: RunExportRequest) -> str:
    return "original" if request.base_from == "original" or not run.quantized else "dequantized"


@dataclass
class _Weights:
    """The trained composition's logits (None when not needed) and the fp32 base to write and check with."""

    trained: list[Any] | None
    base: Any


def _weights(run: RunSource, request: RunExportRequest, kind: str, say: Say) -> _Weights:
    need_trained = request.check or kind == "dequantized"
    trained, weights = trained_logits(run, kind == "dequantized", say) if need_trained else (None, {})
    if request.check or kind == "dequantized":
        say("base weights: " + ("the dequantized weights training used" if kind == "dequantized" and run.quantized
                                else "the original weights"))
    return _Weights(trained, full_precision_base(run, weights, say))


def _check_gguf(run: RunSource, request: RunExportRequest, kind: str, w: _Weights, base_file: Path,
                lora_file: Path, outtype: str, say: Say) -> Parity:
    """llama.cpp runs the base GGUF with the LoRA GGUF; compared with what the export claims to be."""
    if not request.check:
        return skipped(outtype, "--no-check")
    started = time.monotonic()
    say("parity check: running the export with llama.cpp")
    candidate = llama_cpp_logits(base_file, run.batches, lora=lora_file)
    what = f"llama.cpp ({base_file.name} + {lora_file.name})"
    if kind == "dequantized" or not run.quantized:
        assert w.trained is not None
        return measure(outtype, what, "the trained composition", w.trained, candidate, started)
    from nova.merge.parity import compute_logits
    from nova.merge.weights import stack_checked

    reference = compute_logits(stack_checked(w.base, run.inputs.adapters), run.batches)
    parity = measure(outtype, what, "the original base + adapters (fp32, transformers + PEFT)", reference,
                     candidate, started)
    parity.vs_trained = vs_trained(w.trained, candidate)
    return parity


def _note_prompts(run: RunSource, parity: Parity) -> Parity:
    """Say what the check ran on when the run's held-out records could not be read."""
    if parity.skipped is None and not run.held_out:
        parity.notes.append("the run's held-out records were not found (its data files moved?): checked on its "
                            "prompts only")
    return parity


def _warnings(kind: str, run: RunSource, parity: Parity) -> list[str]:
    if kind != "original" or not run.quantized:
        return []
    figures = (f": next-token agreement with the trained model {100 * parity.vs_trained['agreement']:.1f}%, largest "
               f"logit difference {parity.vs_trained['max_logit_diff']:.3g}" if parity.vs_trained else "")
    return [f"--from original: the base is the original weights, but the adapters were trained over its "
            f"{run.inputs.model_cfg.quantization} weights; this export is not the trained model{figures}"]


def _info(run: RunSource, out: Path, base_kind: str, parity: Parity, **files: Any) -> dict[str, Any]:
    return {"format": 2, "run_dir": portable_path(run.record.run.path, out), "adapters": [r.name for r in
            run.inputs.adapters], "base": {"from": base_kind, "model": Path(run.source).name,
                                           "quantization_in_training": run.inputs.model_cfg.quantization,
                                           "note": base_note(run, base_kind)},
            "system_prompt": run.system.to_dict(), "parity": parity.to_dict(), **files, "nova_version": __version__}


def _ollama(run: RunSource, request: RunExportRequest, say: Say) -> ExportResult:
    from nova.export.gguf_lora import write_lora_gguf
    from nova.export.ollama import modelfile_text
    from nova.export.peft_chain import combine
    from nova.runs.card import write_card

    out = request.out.expanduser()
    check_output_dir(out, request.force, marker=EXPORT_INFO)
    outtype, kind = request.outtype or "f16", _kind(run, request)
    w = _weights(run, request, kind, say)
    spec = check_supported(w.base.config)
    base_name = f"base-{outtype}.gguf"
    text = modelfile_text(Path(run.source), run.tokenizer, w.base.config, source=f"./{base_name}",
                          adapter="./adapter.gguf", system=run.system)
    notes: list[str] = []
    with atomic_dir(out, request.force, check=False) as tmp:
        say(f"writing {base_name} ({kind} weights) and adapter.gguf")
        counts = write_gguf(tmp / base_name, w.base, run.tokenizer, spec, outtype, f"{run.record.name} base", notes)
        combined = combine(run.inputs.adapters)
        write_lora_gguf(tmp / "adapter.gguf", combined, w.base.config, spec, "f16", f"{run.record.name} (LoRA)")
        (tmp / "Modelfile").write_text(text, encoding="utf-8")
        parity = _note_prompts(run, _check_gguf(run, request, kind, w, tmp / base_name, tmp / "adapter.gguf",
                                                outtype, say))
        parity.require()
        info = _info(run, out, kind, parity, kind="ollama", weights=base_name, adapter="adapter.gguf")
        (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        write_card(tmp, run.record, kind="ollama", system=run.system, export=info)
    return ExportResult(path=out, size_bytes=dir_size(out), notes=notes, tensor_types=counts, parity=parity,
                        warnings=_warnings(kind, run, parity))


def _lora_file(run: RunSource, request: RunExportRequest, say: Say) -> ExportResult:
    from nova.export.gguf_lora import LORA_OUTTYPES, write_lora_gguf
    from nova.export.peft_chain import combine

    outtype, kind = request.outtype or "f16", _kind(run, request)
    if outtype not in LORA_OUTTYPES:
        raise NovaError(f"a GGUF LoRA adapter is written as f16 or f32, not '{outtype}'",
                        hint="quantize a merged model instead: nova merge, then nova export --model --outtype q4_k_m")
    out = request.out.expanduser()
    ships_base = kind == "dequantized" and run.quantized  # the only base this adapter is right on
    base_out = out.with_name(f"{out.stem}-base-{outtype}.gguf")
    record_out = out.with_name(f"{out.stem}.{EXPORT_INFO}")
    for path in (out, *([base_out] if ships_base else []), record_out):
        if path.is_dir():
            raise NovaError(f"output is a directory: {path}", hint="--out names the .gguf file to write")
        if path.exists() and not request.force:
            raise NovaError(f"output exists: {path}", hint="choose another --out, or pass --force to replace it")
    w = _weights(run, request, kind, say)
    spec = check_supported(w.base.config)
    out.parent.mkdir(parents=True, exist_ok=True)
    for target in (out, base_out):
        clean_stale_siblings(target)  # what a killed export left beside it
    tmp_lora, tmp_base = temp_sibling(out), temp_sibling(base_out)
    notes: list[str] = []
    try:
        combined = combine(run.inputs.adapters)
        count = write_lora_gguf(tmp_lora, combined, w.base.config, spec, outtype, f"{run.record.name} (LoRA)")
        if ships_base or request.check:
            say(f"writing the {kind} base as GGUF" + ("" if ships_base else " (for the check only)"))
            write_gguf(tmp_base, w.base, run.tokenizer, spec, outtype, f"{run.record.name} base", notes)
        parity = _note_prompts(run, _check_gguf(run, request, kind, w, tmp_base, tmp_lora, outtype, say))
        parity.require()
        info = _info(run, record_out.parent, kind, parity, kind="gguf-lora", adapter=out.name,
                     base_file=base_out.name if ships_base else None)
        record_out.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        replace_path(tmp_lora, out)
        if ships_base:
            replace_path(tmp_base, base_out)
    finally:
        tmp_lora.unlink(missing_ok=True)
        tmp_base.unlink(missing_ok=True)
    files = [out, *([base_out] if ships_base else []), record_out]
    notes.append(f"{' + '.join(combined.sources)} as one LoRA adapter of rank {combined.rank} ({count // 2} modules); "
                 + (f"load it over the base written beside it: llama-cli -m {base_out.name} --lora {out.name}"
                    if ships_base else f"load it over the base's GGUF: llama-cli -m BASE.gguf --lora {out.name}"))
    return ExportResult(path=out, size_bytes=sum(f.stat().st_size for f in files), notes=notes,
                        tensor_types={outtype.upper(): count}, parity=parity, warnings=_warnings(kind, run, parity),
                        files=files)


def _peft(run: RunSource, request: RunExportRequest, say: Say) -> ExportResult:
    from nova.export.peft_chain import write_standalone
    from nova.runs.card import write_card

    out = request.out.expanduser()
    check_output_dir(out, request.force, marker=EXPORT_INFO)
    trained = trained_logits(run, False, say)[0] if request.check else None
    with atomic_dir(out, request.force, check=False) as tmp:
        combined = write_standalone(run.record, tmp)
        parity = _note_prompts(run, _check_peft(run, request, tmp, trained, say))
        parity.require()
        info = _info(run, out, "trained", parity, kind="peft", r=combined.rank)
        info["base"]["note"] = _peft_base_note(run)
        (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        write_card(tmp, run.record, kind="standalone", rank=combined.rank, system=run.system, export=info)
    notes = [f"{' + '.join(combined.sources)} folded into one LoRA adapter of rank {combined.rank} "
             f"(lora_alpha {combined.rank}, scales folded into B)"]
    return ExportResult(path=out, size_bytes=dir_size(out), notes=notes, parity=parity)


def _peft_base_note(run: RunSource) -> str:
    cfg = run.inputs.model_cfg
    if not run.quantized:
        return f"`{Path(run.source).name}` as it is (trained unquantized)"
    return (f"`{Path(run.source).name}` loaded as in training: {cfg.quantization}"
            f"{', double quantization' if cfg.double_quant else ''} (transformers BitsAndBytesConfig); over the "
            "unquantized weights this adapter is not the trained model")


def _check_peft(run: RunSource, request: RunExportRequest, adapter_dir: Path, trained: list[Any] | None,
                say: Say) -> Parity:
    """Plain transformers + PEFT: the base loaded as in training, the standalone adapter over it."""
    if not request.check or trained is None:
        return skipped("peft", "--no-check")
    from nova.lazy import require
    from nova.merge.parity import compute_logits
    from nova.model.loading import choose_placement, load_base_model

    started = time.monotonic()
    say("parity check: loading the adapter with plain PEFT over the base as trained")
    exact = exact_inputs(run).model_cfg  # fp32 compute, as the reference
    base = load_base_model(exact, choose_placement(exact.compute_dtype), run.source)
    model = require("peft").PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    candidate = compute_logits(model, run.batches)
    return measure("peft", "PEFT (the standalone adapter over the base as trained)", "the trained composition",
                   trained, candidate, started)
