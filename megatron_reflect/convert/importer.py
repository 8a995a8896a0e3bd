"""Import a Hugging Face Llama-family directory (SmolLM2, Llama 3) as a megatron_reflect checkpoint.

The result is a checkpoint directory of :mod:`megatron_reflect.checkpoint` (step 0, the
tokenizer description, the source's token ids) that the trainer loads as initial weights
(``checkpoint.load``) at any TP/PP layout.

How: ``tp x pp`` local ranks (gloo, :func:`run_distributed`) each build their shard of the
GPTModel and fill it through :func:`load_full_state_dict` from :class:`MegatronView`, a
*lazy* full state dict that reads and fuses one Hugging Face tensor at a time.  Peak memory
is therefore one copy of the model across all ranks plus one full tensor per rank (and each
rank's runtime, ~0.3 GB); the config and every tensor name/shape are checked before any
process starts, so bad input fails fast and leaves nothing behind.  A tokenizer shipped
in the directory is described with the data pipeline's own ``build_tokenizer``, so one that
pipeline would refuse (not round-tripping text tokenized in pieces) is refused here too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterator

import torch

from megatron_reflect.convert.mapping import hf_shapes, model_config_from_hf, rules, to_megatron
from megatron_reflect.convert.tensor_io import HFWeights
from megatron_reflect.errors import ConfigError, ConversionError
from megatron_reflect.model.presets import ModelConfig
from megatron_reflect.runtime.device import device_for_world
from megatron_reflect.runtime.distributed import ParallelConfig

TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


class MegatronView(Mapping[str, torch.Tensor]):
    """The full Megatron state dict of a Hugging Face model, each tensor built on access."""

    def __init__(self, weights: HFWeights, cfg: ModelConfig, padded_vocab: int) -> None:
        self._weights = weights
        self._cfg = cfg
        self._padded_vocab = padded_vocab
        self._rules = {r.megatron: r for r in rules(cfg)}

    def __getitem__(self, name: str) -> torch.Tensor:
        rule = self._rules[name]
        return to_megatron(rule, [self._weights.get(n) for n in rule.hf], self._cfg, self._padded_vocab)

    def __iter__(self) -> Iterator[str]:
        return iter(self._rules)

    def __len__(self) -> int:
        return len(self._rules)


def read_hf_config(hf_dir: Path) -> tuple[dict[str, Any], ModelConfig]:
    path = hf_dir / "config.json"
    if not path.is_file():
        raise ConversionError(f"{hf_dir}: not a Hugging Face model directory (no config.json)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConversionError(f"{path}: invalid JSON ({exc})") from None
    return raw, model_config_from_hf(raw, str(path))


def check_hf_weights(weights: HFWeights, cfg: ModelConfig) -> None:
    """Every tensor the config implies is present with its shape, and nothing else is."""
    expected = {n: s for r in rules(cfg) for n, s in zip(r.hf, hf_shapes(r, cfg))}
    for name, shape in expected.items():
        if name not in weights.names():
            raise ConversionError(f"{weights.dir}: missing tensor '{name}'")
        if weights.shape(name) != shape:
            raise ConversionError(f"{weights.file(name)}: tensor '{name}' has shape {weights.shape(name)}, "
                                  f"config.json implies {shape}")
    ignorable = {"lm_head.weight"} if cfg.tie_embeddings else set()
    extra = sorted(n for n in weights.names() - expected.keys() - ignorable if not n.endswith("rotary_emb.inv_freq"))
    if extra:
        raise ConversionError(f"{weights.dir}: tensors that a Llama model does not have: {extra[:5]}"
                              f"{' ...' if len(extra) > 5 else ''}")


def check_layout(cfg: ModelConfig, tp: int, pp: int) -> None:
    for what, n, by in (("num_attention_heads", cfg.num_attention_heads, tp),
                        ("num_key_value_heads", cfg.num_query_groups, tp),
                        ("intermediate_size", cfg.ffn_hidden_size, tp),
                        ("num_hidden_layers", cfg.num_layers, pp)):
        if by < 1 or n % by:
            raise ConversionError(f"{what}={n} is not divisible by {'TP' if by == tp else 'PP'}={by}")


def _token_ids(hf_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    source = config
    gen = hf_dir / "generation_config.json"
    if gen.is_file():
        try:
            source = {**config, **json.loads(gen.read_text(encoding="utf-8"))}
        except ValueError as exc:
            raise ConversionError(f"{gen}: invalid JSON ({exc})") from None
    return {k: source.get(k) for k in TOKEN_ID_KEYS}


def _tokenizer_description(hf_dir: Path) -> dict[str, Any] | None:
    if not (hf_dir / "tokenizer.json").is_file():
        return None
    from megatron_reflect.data.tokenizers import build_tokenizer

    try:
        return build_tokenizer("hf", str(hf_dir)).describe()
    except ConfigError as exc:
        raise ConversionError(f"{hf_dir}: {exc}") from None


def _import_rank(hf_dir: str, out: str, cfg: ModelConfig, parallel: ParallelConfig, meta: dict[str, Any]) -> None:
    """One rank: build this shard, fill it from the Hugging Face files, save collectively."""
    from megatron_reflect.checkpoint import save_checkpoint
    from megatron_reflect.model import build_gpt_model
    from megatron_reflect.model.state import load_full_state_dict
    from megatron_reflect.runtime import init_runtime

    init_runtime(parallel)
    # The local layer spec's parameter names are the mapping's; Transformer Engine's spec saves
    # the same dist-checkpoint keys plus _extra_state entries, which loading treats as optional
    # (megatron_reflect/checkpoint.py), so a TE trainer loads this checkpoint all the same.
    local = dataclasses.replace(cfg, layer_spec="local")
    model = build_gpt_model(local, parallel, init_weights=False)  # every weight is overwritten below
    view = MegatronView(HFWeights(hf_dir), cfg, cfg.padded_vocab_size(parallel.tensor_model_parallel_size))
    load_full_state_dict(model, view)
    save_checkpoint(out, [model], cfg, meta)


def import_hf(hf_dir: str | Path, out_ckpt_dir: str | Path, tp: int = 1, pp: int = 1) -> Path:
    """Convert ``hf_dir`` into the checkpoint ``out_ckpt_dir`` saved with a TP x PP layout."""
    from megatron_reflect.runtime.launch import run_distributed

    src, out = Path(hf_dir).resolve(), Path(out_ckpt_dir)
    config, cfg = read_hf_config(src)
    weights = HFWeights(src)
    check_hf_weights(weights, cfg)
    check_layout(cfg, tp, pp)
    if out.exists():
        raise ConversionError(f"{out}: already exists; remove it or choose another output directory")
    meta: dict[str, Any] = {"step": 0, "consumed_samples": 0, "imported_from": str(src),
                            "hf_token_ids": _token_ids(src, config)}
    tokenizer = _tokenizer_description(src)
    if tokenizer is not None:
        meta["tokenizer"] = tokenizer
    world = tp * pp
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_distributed(_import_rank, world, str(src), str(out), cfg, ParallelConfig(tp, pp), meta,
                        threads_per_rank=max(1, (os.cpu_count() or 1) // world), device=device_for_world(world))
    except BaseException:
        for leftover in (out.with_name(out.name + ".tmp"), out):
            shutil.rmtree(leftover, ignore_errors=True)
        raise
    return out
