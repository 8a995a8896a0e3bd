"""Safety evaluation of any Hugging Face causal LM directory (exports of this project or public models).

Stages are library functions (data loaders, batched generation, the reflection monitor,
classification, attacks, judges, reports); ``tools/evaluate.py`` is a thin driver over them.
"""
