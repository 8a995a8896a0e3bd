#!/usr/bin/env bash
# SmolLM2-1.7B from scratch on FineWeb-Edu with safety reflections (SRP), on H100/H200 nodes, with torchrun,
# inside the image the Dockerfile builds (docker build -t megatron_reflect .):
#   docker run --gpus all --ipc=host --ulimit memlock=-1 -v /data:/data -it megatron_reflect \
#       examples/pretrain_smollm2_1p7b_fineweb_edu.sh [preprocess]
#
# 1. Data, once (CPU nodes are fine; labels can also be stored first with tools/label_corpus.py and reused
#    with LABELS_DIR=...):
#      FWE_INPUT='/data/fineweb-edu/*.parquet' examples/pretrain_smollm2_1p7b_fineweb_edu.sh preprocess
#    runs tools/preprocess_data.py (packaged SmolLM2 tokenizer, 49,152 tokens; reflect mode) into $DATA_PREFIX.
# 2. Training:
#      One node:   examples/pretrain_smollm2_1p7b_fineweb_edu.sh      (one process per visible GPU: 1, 2, 8 ...)
#      Multi-node: on every node, NNODES=8 NODE_RANK=<0..7> MASTER_ADDR=<node 0> examples/pretrain_...sh
#                  (or sbatch examples/pretrain_smollm2_1p7b_fineweb_edu.sbatch)
#    RUN_DIR must be on a file system every node shares: each rank writes its part of every checkpoint there.
#    Extra arguments are config overrides, e.g. schedule.train_steps=1000 precision.fp8=none
#    Rerunning the same command resumes from the newest complete checkpoint in $RUN_DIR/checkpoints.
#    DRY_RUN=1 prints the torchrun command instead of running it.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
DATA_PREFIX=${DATA_PREFIX:-/data/fwe/reflect}

if [ "${1:-}" = "preprocess" ]; then
    shift
    : "${FWE_INPUT:?set FWE_INPUT to the FineWeb-Edu files (jsonl/parquet glob)}"
    LABEL_ARGS=()
    [ -n "${LABELS_DIR:-}" ] && LABEL_ARGS=(--labels-dir "$LABELS_DIR")
    exec "$PY" tools/preprocess_data.py --input "$FWE_INPUT" --output-prefix "$DATA_PREFIX" --mode reflect \
        --workers "${WORKERS:-$(nproc)}" --resume "${LABEL_ARGS[@]}" "$@"
fi

if [ ! -f "${DATA_PREFIX}_stats.json" ]; then
    echo "no dataset at DATA_PREFIX=$DATA_PREFIX (${DATA_PREFIX}_stats.json missing): run" \
         "'FWE_INPUT=... $0 preprocess' first (tools/preprocess_data.py)" >&2
    exit 2
fi

NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
# one process per GPU this node shows (CUDA_VISIBLE_DEVICES and SLURM's allocation respected)
GPUS_PER_NODE=${GPUS_PER_NODE:-$("$PY" -c 'import torch; print(torch.cuda.device_count())')}
if ! [ "$GPUS_PER_NODE" -ge 1 ] 2>/dev/null; then
    echo "no GPU visible to $PY (GPUS_PER_NODE=$GPUS_PER_NODE); this script trains on GPUs" >&2
    exit 2
fi
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
RUN_DIR=${RUN_DIR:-runs/smollm2-1.7b-srp}
TP=${TP:-1}   # 1.7B fits one H100 with the distributed optimizer; TP=2 for longer sequences
PP=${PP:-1}
FP8=${FP8:-tensorwise}   # tensorwise current scaling (H100 default) | delayed | none (bf16 only)

export CUDA_DEVICE_MAX_CONNECTIONS=1   # lets megatron overlap TP communication with compute
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
export HF_HUB_OFFLINE=1 MEGATRON_REFLECT_DEVICE=cuda

CMD=("$PY" -m torch.distributed.run --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$GPUS_PER_NODE"
     --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT"
     tools/train.py --recipe smollm2-1.7b
     run_dir="$RUN_DIR" data.blend="[$DATA_PREFIX]"
     parallel.tensor_model_parallel_size="$TP" parallel.pipeline_model_parallel_size="$PP"
     precision.dtype=bf16 precision.fp8="$FP8"
     "$@")
if [ -n "${DRY_RUN:-}" ]; then   # DRY_RUN=1: print the command instead of running it
    printf '%q ' "${CMD[@]}"
    echo
    exit 0
fi
exec "${CMD[@]}"
