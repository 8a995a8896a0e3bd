#!/usr/bin/env bash
# CPU quickstart: a small MedSafetyWorld corpus -> SentencePiece tokenizer -> reflected dataset ->
# 300 training steps of the tiny model (a few minutes on a laptop) -> loss / verdict-accuracy plot.
# Rerunning resumes from the newest checkpoint. Usage: examples/cpu_quickstart.sh [out_dir] [extra overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-runs/cpu_quickstart}; shift || true
mkdir -p "$OUT"

# 1. a corpus with exact span labels (the oracle labeler reads them)
[ -f "$OUT/world/corpus.jsonl" ] || $PY tools/make_world.py --out "$OUT/world" --seed 0 --quick
# 2. a small tokenizer with the reflection tags as single pieces
[ -f "$OUT/tok.model" ] || $PY tools/train_tokenizer.py --input "$OUT/world/corpus.jsonl" \
    --output-prefix "$OUT/tok" --vocab-size 640 --reflection-tags
# 3. segment, label, insert reflections, tokenize
[ -f "$OUT/data/reflect_stats.json" ] || $PY tools/preprocess_data.py --input "$OUT/world/corpus.jsonl" \
    --output-prefix "$OUT/data/reflect" --labeler oracle --mode reflect \
    --tokenizer-type sentencepiece --tokenizer-model "$OUT/tok.model"
# 4. train (single process; for 2 ranks: torchrun --nproc_per_node 2 tools/train.py ... parallel.tensor_model_parallel_size=2)
$PY tools/train.py --recipe tiny-cpu --config examples/tiny_cpu.yaml \
    run_dir="$OUT/run" data.blend="[$OUT/data/reflect]" "$@"
# 5. curves
$PY tools/plot_metrics.py "$OUT/run"
