#!/usr/bin/env bash
# GPU acceptance check: the one command a person with a GPU runs.  Prints one table (tools/gpu_check.py):
# device, kernels, Transformer Engine, bf16 / bf16-without-fusions / FP8 tokens/s and MFU of the
# SmolLM2-1.7B preset, save + resume, memory, export parity, and with >= 2 GPUs a torchrun DP=2 run.
# Two tiers: with Transformer Engine (the image the Dockerfile builds, or pip install '.[gpu]') every row
# runs; without it (a bare CUDA host with torch and the wheels of tools/gpu_bundle.sh on PYTHONPATH) every
# row that needs no TE runs and the TE rows say "Transformer Engine not installed".
# Exit: 0 all ok; 3 ok without Transformer Engine; 1 a row failed; 2 no GPU / no usable python.
# Expected: ~5 min on one H100/H200 with TE, ~3 min without; ~2 min more with >= 2 GPUs.
#   tools/gpu_check.sh [--preset smollm2-1.7b] [--steps 10] [--micro-batch 4] [--microbatches 16]
#                      [--peak-tflops X] [--tokenizer-dir DIR] [--work-dir DIR]
# PYTHON=/path/to/python picks the interpreter; otherwise the first of python3, python, .venv/bin/python
# that imports transformer_engine, else the first that imports torch and megatron.core.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # this repository's package, installed or not

imports() {  # imports PYTHON MODULE...: whether PYTHON can import every MODULE
    local py=$1
    shift
    command -v "$py" >/dev/null 2>&1 || return 1
    "$py" - "$@" >/dev/null 2>&1 <<'EOF'
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
EOF
}

if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
else
    PY=
    for modules in "transformer_engine.pytorch megatron.core" "torch megatron.core"; do
        for candidate in python3 python .venv/bin/python; do
            # shellcheck disable=SC2086  # $modules is a list of module names
            if imports "$candidate" $modules; then
                PY=$candidate
                break 2
            fi
        done
    done
    if [ -z "$PY" ]; then
        echo "gpu_check: no python here imports torch and megatron.core (on a bare host: tools/gpu_bundle.sh," \
             "then its printed install command; PYTHON=... to choose one)" >&2
        exit 2
    fi
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA device is visible to $PY (torch.cuda.is_available() is False)" >&2
    exit 2
fi
export CUDA_DEVICE_MAX_CONNECTIONS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MEGATRON_REFLECT_DEVICE=cuda
echo "gpu_check: $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])'))"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec "$PY" tools/gpu_check.py "$@"
