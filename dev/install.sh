#!/usr/bin/env bash
# Install nanochat's dependencies into the current Python environment.
# A machine without an NVIDIA GPU gets the CPU build of torch (no GBs of CUDA wheels);
# one with a GPU gets the default CUDA build. An already installed torch is kept.
# Override with TORCH_VERSION=... or TORCH_INDEX_URL=...
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python || command -v python3)}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
if "$PY" -c "import torch" 2>/dev/null; then
    echo "install: torch $("$PY" -c 'import torch; print(torch.__version__)') already installed"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "install: NVIDIA GPU found, installing the CUDA build of torch $TORCH_VERSION"
    "$PY" -m pip install -q "torch==$TORCH_VERSION" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
else
    echo "install: no NVIDIA GPU, installing the CPU build of torch $TORCH_VERSION"
    "$PY" -m pip install -q "torch==$TORCH_VERSION" --index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
fi
"$PY" -m pip install -q -e ".[dev]"
echo "install: done"
