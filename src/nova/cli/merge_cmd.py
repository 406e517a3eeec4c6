"""``nova merge``: bake a run's adapter chain into a standalone Hugging Face model directory.

Heavy imports (torch, transformers, peft) happen inside the command, so ``nova --help`` stays fast;
``nova.merge`` itself is light (no torch, no config schema), so its defaults are imported here.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

from nova.cli.options import JsonOpt, TrustRemoteCodeOpt
from nova.console import echo
from nova.merge import DEFAULT_SOURCE, DEFAULT_TOLERANCE


class Dtype(str, Enum):
    auto = "auto"
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"


class Source(str, Enum):
    dequantized = "dequantized"
    original = "original"


def merge(
    run: Path = typer.Option(..., "--run", "-r", help="Run directory of the last phase (holds config.yaml, "
                             "adapter/); earlier phases' adapters come from its chain."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output directory [default: <RUN>-merged, beside "
                                    "the run directory, so the checkpoints are never shipped]."),
    dtype: Dtype = typer.Option(Dtype.auto, "--dtype", help="Weights dtype of the output; auto = the dtype in the "
                                "base's config.json. The merge itself is computed in fp32."),
    source: Source = typer.Option(
        Source(DEFAULT_SOURCE), "--from",
        help="Full-precision weights the adapters are added to, for a quantized run. dequantized (default): the "
        "nf4/int8 weights the adapters were trained against, dequantized, so the merged model IS the trained and "
        "evaluated one (SmolLM2-135M: max logit diff 1.7e-4, same argmax everywhere). original: the base's own "
        "weights, as other tools merge; keeps the base's precision but is a model nobody evaluated (SmolLM2-135M: "
        "max logit diff 22, argmax differs on 30% of tokens). See docs/merge.md. Same result for "
        "quantization: none."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output directory (an earlier merge)."),
    tolerance: float = typer.Option(DEFAULT_TOLERANCE, "--tolerance", min=0.0, help="Largest max-abs logit "
                                    "difference allowed between the merged model and base + adapters, both fp32 "
                                    "(measured: 2e-4 on SmolLM2-135M)."),
    trust_remote_code: TrustRemoteCodeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Merge base + every phase's adapter into one model loadable by plain transformers (no PEFT, no nova)."""
    from nova.merge.inputs import MergeRequest
    from nova.merge.run import merge_run

    say = (lambda _: None) if as_json else (lambda line: echo(line, err=True))
    result = merge_run(MergeRequest(run_dir=run, out=out, dtype=dtype.value, source=source.value, force=force,
                                    tolerance=tolerance, trust_remote_code=trust_remote_code), say=say)
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
        return
    for line in result.lines():
        echo(line)
