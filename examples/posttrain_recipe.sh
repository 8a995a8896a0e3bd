#!/usr/bin/env bash
# The paper's real-world recipe as one sequence, from a raw corpus and a chat data set to the model it attacks:
#   1 label -> 2 preprocess -> 3 pretrain -> 4 export -> 5 prepare_sft (Tulu-3-format chat data) -> 6 sft -> 7 evaluate
#
# GPU nodes (SmolLM2-1.7B from scratch; run inside the image the Dockerfile builds):
#   CORPUS='/data/fineweb-edu/*.parquet' CHAT=/data/tulu-3-sft-mixture/train.parquet OUT=/data/srp \
#       examples/posttrain_recipe.sh
#   - step 3 runs examples/pretrain_smollm2_1p7b_fineweb_edu.sh (torchrun, one process per GPU, FP8 on H100;
#     NNODES/NODE_RANK/MASTER_ADDR for several nodes, extra pretraining overrides in PRETRAIN_ARGS);
#   - step 6 runs `accelerate launch --num_processes $GPUS tools/sft.py` (DDP; bf16, gradient checkpointing,
#     packing); `torchrun --nproc_per_node $GPUS tools/sft.py ...` is the same.  Rank 0 writes the model.
# CPU, tiny (tests/test_prepare_sft.py::test_recipe_end_to_end_tiny runs exactly this):
#   TINY=1 LABELER=oracle CORPUS=corpus.jsonl CHAT=chat.jsonl CHAT_LABELS="--label-field harmful" OUT=dir \
#       examples/posttrain_recipe.sh
#
# Knobs: LABELER (classifier | oracle | openai | hf: labels the corpus, step 1), CHAT_LABELS (how prepare_sft
# labels the chat data: "--labeler classifier" by default, "--label-field NAME" for sets that ship harm labels,
# "--labels FILE" for stored labels), FT_HARMFUL / FT_BENIGN (your finetuning-attack Q/A files, HEx-PHI and
# GSM8K style), EVAL_CONFIG (configs/eval/full.yaml on GPUs).  Each step is skipped when its output exists,
# so rerunning resumes (the pretraining and prepare_sft steps also resume inside themselves).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-runs/recipe}
: "${CORPUS:?set CORPUS to the pretraining corpus (jsonl/parquet, globs quoted)}"
: "${CHAT:?set CHAT to the chat data (Tulu-3 messages or prompt/response; jsonl/parquet, plain or .zst)}"
LABELER=${LABELER:-classifier}
CHAT_LABELS=${CHAT_LABELS:---labeler classifier}
export HF_HUB_OFFLINE=1
mkdir -p "$OUT"

if [ "${TINY:-0}" = 1 ]; then
    export MEGATRON_REFLECT_DEVICE=cpu OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    SFT=("$PY" tools/sft.py --steps 2 --batch-size 2 --max-length 128 --lr 1e-3 --device cpu)
    EVAL_CONFIG=${EVAL_CONFIG:-$OUT/eval_tiny.yaml}
    cat > "$OUT/eval_tiny.yaml" <<'YAML'
out_dir: runs/recipe-eval
device: cpu
n_prompts: 2
generation: {max_new_tokens: 8, batch_size: 4}
judges: [refusal]
evaluations:
  - {type: classification, set: prompts, limit: 4}
  - {type: direct}
  - type: finetune
    finetune: {methods: [lora], kinds: [harmful, benign], k: [2], lrs: [1.0e-3], steps: [2], batch_size: 2,
               max_length: 96, then: [direct]}
YAML
else
    GPUS=${GPUS:-$("$PY" -c 'import torch; print(torch.cuda.device_count())')}
    SFT=(accelerate launch --num_processes "$GPUS" tools/sft.py --bf16 --gradient-checkpointing --packing
         --steps "${SFT_STEPS:-2000}" --batch-size 8 --grad-accum 2 --lr 2e-5 --warmup-steps 100 --max-length 2048)
    EVAL_CONFIG=${EVAL_CONFIG:-configs/eval/full.yaml}
fi

echo "[1/7] label the corpus ($LABELER)"
"$PY" tools/label_corpus.py --input "$CORPUS" --labels-dir "$OUT/labels" --labeler "$LABELER"

echo "[2/7] preprocess: segment, insert reflections from the stored labels, tokenize"
[ -f "$OUT/data/reflect_stats.json" ] || "$PY" tools/preprocess_data.py --input "$CORPUS" \
    --output-prefix "$OUT/data/reflect" --mode reflect --labels-dir "$OUT/labels"

echo "[3/7] pretrain"
if [ "${TINY:-0}" = 1 ]; then
    "$PY" tools/train.py --recipe tiny-cpu run_dir="$OUT/pretrain" data.blend="[$OUT/data/reflect]" \
        data.seq_length=64 schedule.train_steps=4 schedule.warmup_steps=1 schedule.micro_batch_size=2 \
        schedule.global_batch_size=2 schedule.eval_interval=0 checkpoint.save_interval=4 logging.tensorboard=false
else
    DATA_PREFIX="$OUT/data/reflect" RUN_DIR="$OUT/pretrain" PYTHON="$PY" \
        examples/pretrain_smollm2_1p7b_fineweb_edu.sh ${PRETRAIN_ARGS:-}
fi

echo "[4/7] export the newest checkpoint to Hugging Face (with reflection_format.json)"
CKPT=$(ls -d "$OUT"/pretrain/checkpoints/step_* | sort | tail -1)
[ -f "$OUT/hf/config.json" ] || "$PY" tools/convert_checkpoint.py export "$CKPT" "$OUT/hf"

echo "[5/7] prepare_sft: reflections into the chat data"
# shellcheck disable=SC2086
"$PY" tools/prepare_sft.py --input "$CHAT" --output "$OUT/sft.jsonl" $CHAT_LABELS --template-from "$OUT/hf"

echo "[6/7] reflection SFT on TRL"
[ -f "$OUT/sft/config.json" ] || "${SFT[@]}" --model "$OUT/hf" --data "$OUT/sft.jsonl" --out "$OUT/sft"

echo "[7/7] evaluate: classification, inference attacks, finetuning attacks"
"$PY" tools/evaluate.py --config "$EVAL_CONFIG" --model "$OUT/sft" --out "$OUT/eval" \
    ${FT_HARMFUL:+--finetune-harmful "$FT_HARMFUL"} ${FT_BENIGN:+--finetune-benign "$FT_BENIGN"}
