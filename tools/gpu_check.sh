#!/usr/bin/env bash
# GPU acceptance check (run on an H100 box, in an NGC PyTorch container or the [gpu] extra):
# Transformer Engine build, SmolLM2-1.7B (or the largest preset that fits) ~50 steps in bf16 and FP8
# with tokens/s per GPU and MFU, and HF export parity. Prints a table; exit 1 if a part failed.
#   tools/gpu_check.sh [--preset smollm2-1.7b] [--steps 50] [--seq 2048] [--micro-batch 2]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
export CUDA_DEVICE_MAX_CONNECTIONS=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec "$PY" tools/gpu_check.py "$@"
