#!/usr/bin/env bash
# Everything a bare, offline CUDA host lacks to run tools/gpu_check.sh's tier without Transformer Engine,
# in one folder of at most 60 MiB to carry in by hand.
#   tools/gpu_bundle.sh [OUT_DIR]          (default: gpu_bundle/, ignored by git)
# The host this serves: Python 3.12, torch (CUDA), transformers, tokenizers, sentencepiece and pyarrow;
# no megatron-core, no Transformer Engine, no apex, no network.  The folder holds
#   wheels/     megatron-core and psutil (megatron's dist-checkpoint save needs it; undeclared by megatron-core),
#               the versions installed here, for CPython 3.12 on $BUNDLE_PLATFORM
#   tokenizer/  the SmolLM2 tokenizer files (no model weights)
#   INSTALL     the command to run on the host from this repository's root (also printed at the end):
#               pip install --no-index --no-deps --target <bundle>/site <bundle>/wheels/*.whl, then
#               PYTHONPATH=<bundle>/site tools/gpu_check.sh --tokenizer-dir <bundle>/tokenizer
# Carry the repository too (git bundle or a copy without .venv): gpu_check runs its code from there.
# BUNDLE_PLATFORM (default manylinux_2_28_x86_64; aarch64 hosts such as GH200: manylinux_2_28_aarch64);
# PYTHON (default .venv/bin/python) is the interpreter whose installed versions and pip are used.
# Needs the package index (or pip's cache) here, once; nothing on the host.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-gpu_bundle}
PLATFORM=${BUNDLE_PLATFORM:-manylinux_2_28_x86_64}
LIMIT_MIB=60

version() {  # the installed version of a distribution
    "$PY" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1"
}

rm -rf "$OUT"
mkdir -p "$OUT/wheels" "$OUT/tokenizer"
# manylinux_2_28 hosts also run wheels tagged for older glibc (psutil ships manylinux2014 / _2_17 ones)
arch=${PLATFORM##*_2_28_}
platforms=()
for tag in "$PLATFORM" "manylinux_2_17_$arch" "manylinux2014_$arch"; do
    platforms+=(--platform "$tag")
done
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp "${platforms[@]}" --dest "$OUT/wheels" \
    "megatron-core==$(version megatron-core)" "psutil==$(version psutil)" \
    2> >(grep -v "^WARNING: Location" >&2)   # this machine's local index mirrors: noise

"$PY" - "$OUT/tokenizer" <<'EOF'
import shutil, sys
from pathlib import Path

from megatron_reflect.packaged import smollm2_hf_dir

source = smollm2_hf_dir()
for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
    if (source / name).is_file():
        shutil.copy2(source / name, Path(sys.argv[1]) / name)
EOF

cat > "$OUT/INSTALL" <<EOF
# on the GPU host, from the repository's root, with this folder at \$BUNDLE (default: ./$(basename "$OUT")):
BUNDLE=\${BUNDLE:-$(basename "$OUT")}; python3 -m pip install --no-index --no-deps --target "\$BUNDLE/site" "\$BUNDLE"/wheels/*.whl && PYTHONPATH="\$BUNDLE/site" tools/gpu_check.sh --tokenizer-dir "\$BUNDLE/tokenizer"
EOF

size=$(du -sb "$OUT" | cut -f1)
if [ "$size" -gt $((LIMIT_MIB * 1024 * 1024)) ]; then
    echo "gpu_bundle: $OUT is $((size / 1024 / 1024)) MiB, above the ${LIMIT_MIB} MiB that can be carried at once" >&2
    exit 1
fi
echo "gpu_bundle: $OUT ($((size / 1024)) KiB): $(cd "$OUT/wheels" && echo *.whl) + tokenizer/"
echo "on the GPU host, from the repository's root (the command is also in $OUT/INSTALL):"
tail -n 1 "$OUT/INSTALL"
