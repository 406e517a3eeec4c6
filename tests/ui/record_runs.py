"""Record the run directories the UI tests serve: a real nova pipeline of the tiny test model.

    PYTHONPATH=src .venv/bin/python tests/ui/record_runs.py

Trains Doica (SFT) then Sora (SFT, then DPO, starting from Doica) on the tiny random llama of
tests/tiny_model.py, with smoke prompts (one holds HTML and a script, so the tests can check
that the UI shows it as text) and a gradient-norm ceiling low enough to raise alerts. Then it
copies every text file of the output (not the weights) into tests/ui/fixtures/demo/, with the
output directory written as @OUT@ and the temporary one as @ROOT@, so the tests can place the
runs anywhere. About a minute on 2 CPU cores.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
OUT = HERE / "fixtures" / "demo"
TEXT = {".json", ".jsonl", ".yaml", ".md", ""}
SKIP = {"nova.pid", "tokenizer.json", "tokenizer_config.json"}
HTML_PROMPT = "<script>window.__nova_pwned = 1</script><b>bold?</b> & <i>who are you</i>"

TRAIN = ("{max_steps: %d, micro_batch_size: 2, gradient_accumulation_steps: 1, learning_rate: %s, "
         "warmup_steps: 1, logging_steps: 1, eval_steps: %d, save_steps: 100, gradient_checkpointing: false}")


def pipeline_yaml(tmp: Path, model: Path) -> Path:
    data = REPO / "data"
    text = f"""
output_dir: {tmp / "out"}
phases:
  - name: doica
    model: {{base: {model}, quantization: nf4}}
    data: {{datasets: [{{path: {data / "doica_ro.jsonl"}, max_samples: 30}}], eval_split: 0.2, max_length: 128}}
    training: {TRAIN % (12, "5.0e-3", 4)}
    monitor: {{grad_norm_max: 0.5, alert_repeat_steps: 4}}
    logs_dir: {tmp / "logs"}
    smoke_prompts: ["Cine esti tu?"]
  - name: sora
    start_from: doica
    lora: {{r: 16, alpha: 32, dropout: 0.1}}
    logs_dir: {tmp / "logs"}
    retention: {{replay: 0.3}}
    stages:
      - method: sft
        data: {{datasets: [{{path: {data / "sora_en.jsonl"}, max_samples: 30}}], eval_split: 0.2, max_length: 128}}
        training: {TRAIN % (10, "5.0e-3", 5)}
      - method: dpo
        data: {{datasets: [{{path: {data / "sora_dpo.jsonl"}, max_samples: 40}}], eval_split: 0.25}}
        dpo: {{beta: 0.1, max_prompt_length: 64, max_completion_length: 64}}
        training: {TRAIN % (8, "2.0e-2", 4)}
    smoke_prompts: ["Tell me who you are, in one sentence.", {HTML_PROMPT!r}]
"""
    path = tmp / "pipeline.yaml"
    path.write_text(text)
    return path


def copy_text(src: Path, dst: Path, root: Path) -> None:
    """Every text file under ``src`` (not weights, tokenizers or locks) into ``dst``, with the output
    directory ``src`` written as @OUT@ and the rest of the temporary directory ``root`` as @ROOT@."""
    for path in sorted(src.rglob("*")):
        if not path.is_file() or path.suffix not in TEXT or path.name in SKIP:
            continue
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        text = path.read_text(encoding="utf-8").replace(str(src), "@OUT@").replace(str(root), "@ROOT@")
        text = text.replace(f"{REPO}/", "")  # the data files, as paths relative to the repository
        target.write_text(text, encoding="utf-8")


def main() -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from nova.config import load_yaml_config
    from nova.console import RunLog
    from nova.train.pipeline import run_config
    from tiny_model import build_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="nova-ui-record-"))
    model = build_tiny_model(tmp / "tiny-model")
    run_config(load_yaml_config(pipeline_yaml(tmp, model)), log=RunLog(tmp / "log.txt"))
    shutil.rmtree(OUT, ignore_errors=True)
    copy_text(tmp / "out", OUT, tmp)
    print(f"recorded {OUT} from {tmp}")


if __name__ == "__main__":
    main()
