#!/usr/bin/env bash
# GPU acceptance check: the one command a person with a GPU runs (in the image the Dockerfile builds,
# or any environment with the [gpu] extra).  Prints one table: device, Transformer Engine version,
# bf16 / bf16-without-fusions / FP8 tokens/s and MFU for the SmolLM2-1.7B preset (or a preset with at
# most half its parameters if it does not fit), memory freed between runs, export parity, and with
# >= 2 GPUs a torchrun DP=2 save + resume run.  Exits non-zero if any row failed or was skipped.
# Expected: ~5-6 min on one H100/H200, ~2 min more with >= 2 GPUs (see tools/gpu_check.py --help).
#   tools/gpu_check.sh [--preset smollm2-1.7b] [--steps 30] [--seq 2048] [--micro-batch 2] [--work-dir DIR]
# PYTHON=/path/to/python picks the interpreter; otherwise the first of python3, python, .venv/bin/python
# that can import transformer_engine (a CPU .venv cannot, so inside the image the container's wins).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
else
    PY=
    for candidate in python3 python .venv/bin/python; do
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import transformer_engine.pytorch" >/dev/null 2>&1; then
            PY=$candidate
            break
        fi
    done
    if [ -z "$PY" ]; then
        echo "gpu_check: no python here imports transformer_engine (use the image the Dockerfile builds," \
             "or pip install '.[gpu]'; PYTHON=... to choose one)" >&2
        exit 2
    fi
fi
export CUDA_DEVICE_MAX_CONNECTIONS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MEGATRON_REFLECT_DEVICE=cuda
echo "gpu_check: $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])'))"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec "$PY" tools/gpu_check.py "$@"
