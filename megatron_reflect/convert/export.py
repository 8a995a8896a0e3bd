"""Export a megatron_reflect checkpoint (any TP/PP layout) to a Hugging Face Llama directory.

Output: ``config.json``, ``generation_config.json``, safetensors shards (+ index), the
tokenizer files and ``reflection_format.json`` (the template and verdict words the model
was trained with, so post-training and evaluation read the format instead of guessing it).

Why it reads the torch_dist files directly: a dist checkpoint stores every tensor in its
global (unsharded) shape whatever layout wrote it, so one process can read it layer by
layer with no process group and no model build, and safetensors shards are streamed
(headers computed from the planned shapes).  Measured on SmolLM2-135M: peak memory above
the runtime is about twice the largest tensor (the embedding, read + decoded) plus
transformers' tokenizer machinery (~0.3 GB), about 1.1x the fp32 model there and a smaller
fraction for larger models; time is reading + writing the bytes once.

Crash safety: the directory is written under a hidden temporary name (``.<out>.tmp-<pid>``)
and renamed when complete; inside it ``config.json`` (what makes a directory loadable by
``from_pretrained``) is written last, after every weight shard, so a SIGKILL at any moment
leaves nothing that loads as a model.  Leftovers of killed exports (their process gone)
are removed by the next export to the same place.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch

from megatron_reflect.checkpoint import DIST, read_meta, read_model_config
from megatron_reflect.config import from_dict
from megatron_reflect.convert.mapping import (
    EMBEDDING,
    hf_config_from_model_config,
    hf_shapes,
    megatron_shape,
    rules,
    to_hf,
)
from megatron_reflect.convert.tensor_io import DistWeights, Planned, write_safetensors
from megatron_reflect.errors import ConfigError, ConversionError, ReflectError
from megatron_reflect.model.presets import ModelConfig
from megatron_reflect.reflection import DEFAULT_TEMPLATE, ReflectionTemplate, Verdict
from megatron_reflect.runtime.faults import kill_point

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
REFLECTION_FORMAT = "reflection_format.json"
DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3


def parse_dtype(name: str) -> torch.dtype:
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
    key = aliases.get(name, name)
    if key not in DTYPES:
        raise ConversionError(f"dtype {name!r} is not one of {sorted(DTYPES) + sorted(aliases)}")
    return DTYPES[key]


def _dist_key(rule_dist: str) -> str:
    return "model." + rule_dist


def _check_dist(weights: DistWeights, cfg: ModelConfig, ckpt: Path) -> None:
    """Every tensor the config implies is in the checkpoint, with the right shape."""
    if weights.shape(_dist_key(EMBEDDING.dist)) is None and any(k.startswith("model0.") for k in weights.keys()):
        raise ConversionError(f"{ckpt}: virtual-pipeline checkpoints (model0., model1., ...) are not supported")
    for rule in rules(cfg):
        key = _dist_key(rule.dist)
        shape = weights.shape(key)
        if shape is None:
            raise ConversionError(f"{ckpt / DIST}: missing tensor '{key}' (for {rule.megatron})")
        if rule.fuse == "vocab":  # padded rows: any count >= the vocabulary
            ok = shape[0] >= cfg.vocab_size and shape[1:] == megatron_shape(rule, cfg, cfg.vocab_size)[1:]
        else:
            want = megatron_shape(rule, cfg, cfg.vocab_size)
            ok = shape == (want if rule.layer is None else (cfg.num_layers, *want))
        if not ok:
            raise ConversionError(f"{ckpt / DIST}: tensor '{key}' has shape {shape}, which does not fit "
                                  f"{ckpt / 'model_config.yaml'}")


def _hf_tensors(weights: DistWeights, cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    from tqdm import tqdm

    written = 0
    for rule in tqdm(rules(cfg), desc="export", unit="tensor", disable=None):
        tensor = weights.read(_dist_key(rule.dist), rule.layer)
        for item in zip(rule.hf, to_hf(rule, tensor, cfg)):
            kill_point("export_tensor", written)  # crash-safety tests; the previous tensor is on disk
            yield item
            written += 1


def reflection_template_from_meta(meta: dict[str, Any], where: str) -> ReflectionTemplate:
    raw = meta.get("reflection_template")
    if raw is None:
        return DEFAULT_TEMPLATE
    try:
        return from_dict(ReflectionTemplate, raw, where=f"{where}: reflection_template")
    except ConfigError as exc:
        raise ConversionError(str(exc)) from None


def reflection_format(template: ReflectionTemplate, source: str) -> dict[str, Any]:
    """What downstream tools need to write, find and strip reflections."""
    from megatron_reflect.reflection import Reflection

    return {
        "template": dataclasses.asdict(template),
        "verdicts": [v.value for v in Verdict],
        "prefix": template.prefix(),
        "examples": {"safe": template.render(Reflection(Verdict.SAFE))[0],
                     "unsafe": template.render(Reflection(Verdict.UNSAFE, template.categories[0]
                                                          if template.categories else None))[0]},
        "source": source,
    }


def read_reflection_format(hf_dir: str | Path) -> ReflectionTemplate:
    """The reflection template recorded in an exported directory."""
    path = Path(hf_dir) / REFLECTION_FORMAT
    if not path.is_file():
        raise ConversionError(f"{hf_dir}: no {REFLECTION_FORMAT} (not exported by megatron_reflect?)")
    try:
        return from_dict(ReflectionTemplate, json.loads(path.read_text(encoding="utf-8"))["template"],
                         where=str(path))
    except (ValueError, KeyError, ConfigError) as exc:
        raise ConversionError(f"{path}: malformed reflection format ({exc})") from None


def tokenizer_description(meta: dict[str, Any], ckpt: Path) -> dict[str, Any] | None:
    """The checkpoint's tokenizer description, checked (what ``Tokenizer.describe()`` wrote), or None."""
    desc = meta.get("tokenizer")
    if desc is None:
        return None
    where = f"{ckpt / 'meta.json'}: 'tokenizer'"
    if not isinstance(desc, dict):
        raise ConversionError(f"{where} must be a tokenizer description (a mapping), not {type(desc).__name__}")
    missing = [key for key in ("type", "vocab_size") if key not in desc]
    if missing:
        raise ConversionError(f"{where} has no {' or '.join(repr(k) for k in missing)} (it has {sorted(desc)}): "
                              f"not a tokenizer description; pass --tokenizer-dir with the tokenizer to ship")
    if not isinstance(desc["type"], str) or not isinstance(desc["vocab_size"], int):
        raise ConversionError(f"{where}: 'type' must be a string and 'vocab_size' an integer, got "
                              f"{desc['type']!r} and {desc['vocab_size']!r}")
    return desc


def _write_tokenizer(meta: dict[str, Any], tokenizer_dir: str | Path | None, out: Path, cfg: ModelConfig,
                     ckpt: Path) -> dict[str, int | None]:
    """Save the tokenizer into ``out``; return the token ids for the HF configs."""
    from transformers import AutoTokenizer

    from megatron_reflect.data.tokenizers import build_tokenizer, tokenizer_from_description

    desc = tokenizer_description(meta, ckpt) if tokenizer_dir is None else None
    try:
        if tokenizer_dir is not None:
            tok = build_tokenizer("hf", str(tokenizer_dir))
        elif desc:
            tok = tokenizer_from_description(desc)
        else:
            raise ConversionError(f"{ckpt / 'meta.json'}: no 'tokenizer' description; pass a tokenizer directory")
        tok.save_hf(out)
    except ConversionError:
        raise
    except (ReflectError, OSError, ValueError, KeyError, TypeError) as exc:
        raise ConversionError(f"tokenizer for {ckpt} ({desc if desc else tokenizer_dir}): {exc}") from None
    if tok.vocab_size > cfg.vocab_size:
        raise ConversionError(f"tokenizer has {tok.vocab_size} tokens but the model in {ckpt} only "
                              f"{cfg.vocab_size}: wrong tokenizer")
    ids = meta.get("hf_token_ids")
    if ids:
        return {k: ids.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    hf = AutoTokenizer.from_pretrained(str(out))
    return {"bos_token_id": hf.bos_token_id, "eos_token_id": tok.eod_id,
            "pad_token_id": tok.pad_id if tok.pad_id is not None else tok.eod_id}


def _tmp_prefix(out: Path) -> str:
    return f".{out.name}.tmp-"


def _remove_dead_exports(out: Path) -> None:
    """Remove the temporary directories of earlier exports to ``out`` whose process is gone."""
    prefix = _tmp_prefix(out)
    for p in out.parent.glob(f"{prefix}*"):
        pid = p.name[len(prefix):]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            alive = int(pid) != os.getpid()
        except ProcessLookupError:
            alive = False
        except PermissionError:  # someone else's live process
            alive = True
        if not alive:
            shutil.rmtree(p, ignore_errors=True)


def export_checkpoint(ckpt_dir: str | Path, out_dir: str | Path, dtype: str = "float32",
                      tokenizer_dir: str | Path | None = None,
                      max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> Path:
    """Write the Hugging Face ``LlamaForCausalLM`` directory ``out_dir`` for ``ckpt_dir``."""
    from transformers import GenerationConfig

    ckpt, out = Path(ckpt_dir), Path(out_dir)
    cfg = read_model_config(ckpt)
    meta = read_meta(ckpt)
    torch_dtype = parse_dtype(dtype)
    template = reflection_template_from_meta(meta, str(ckpt / "meta.json"))
    if out.exists():
        raise ConversionError(f"{out}: already exists; remove it or choose another output directory")
    weights = DistWeights(ckpt / DIST)
    _check_dist(weights, cfg, ckpt)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_exports(out)
    tmp = out.with_name(f"{_tmp_prefix(out)}{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        token_ids = _write_tokenizer(meta, tokenizer_dir, tmp, cfg, ckpt)
        source = "meta.json" if meta.get("reflection_template") is not None else "default"
        (tmp / REFLECTION_FORMAT).write_text(json.dumps(reflection_format(template, source), indent=2),
                                             encoding="utf-8")
        plan = [Planned(name, shape, torch_dtype)
                for rule in rules(cfg) for name, shape in zip(rule.hf, hf_shapes(rule, cfg))]
        write_safetensors(tmp, plan, _hf_tensors(weights, cfg), max_shard_bytes)
        # the configs last: before them the directory does not load as a model
        GenerationConfig(**token_ids).save_pretrained(str(tmp))
        hf_config_from_model_config(cfg, torch_dtype, token_ids).save_pretrained(str(tmp))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
