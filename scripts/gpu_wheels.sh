#!/usr/bin/env bash
# Download the wheels the GPU kit needs on the device machine (Python 3.12, x86_64, no network there)
# into .whl/ (ignored by git; carried with `carry: [".whl"]`). The machine already has torch,
# transformers, peft, accelerate, safetensors, tokenizers, pyarrow, pandas, pyyaml, typer, jinja2,
# xxhash, fsspec, nvidia-ml-py and matplotlib (/work/.library/device/KINDS.md); these are what nova's
# training path needs on top. Versions match this checkout's .venv so the kit runs the code the tests ran.
#
#   bash scripts/gpu_wheels.sh          # about 50 MB; the tree that travels must stay under 64 MiB
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DEST=.whl
mkdir -p "$DEST"
PACKAGES=(
  bitsandbytes==0.50.2      # nf4 CUDA kernels (43 MB)
  trl==1.16.0
  datasets==5.2.0
  dill==0.4.1               # datasets
  multiprocess==0.70.19     # datasets
  pydantic==2.14.4          # nova.config
  pydantic-core==2.50.5
  annotated-types==0.8.0
  typing-inspection==0.4.5
  typing-extensions==4.16.0 # pydantic 2.14 needs >= 4.16
  orjson==3.13.0            # nova.data readers
  gguf==0.19.0              # nova export
)
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$DEST" "${PACKAGES[@]}"
du -sh "$DEST"
ls "$DEST"
