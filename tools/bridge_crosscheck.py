#!/usr/bin/env python
"""Optional cross-check of our Hugging Face -> Megatron mapping against Megatron-Bridge.

Megatron-Bridge cannot be imported without Transformer Engine, so this only runs on a GPU
machine that has it (an NGC container with ``megatron-bridge`` installed); anywhere else it
prints SKIP and exits 0.  It loads the HF model with ``AutoBridge`` into Bridge's own
GPTModel (TP=1, PP=1), then compares every parameter with the tensor our mapping builds from
the same files (:class:`megatron_reflect.convert.importer.MegatronView`).  Exit 1 on any
difference above --tolerance (0 by default: both are exact copies).

    python tools/bridge_crosscheck.py [--hf-dir DIR]     # default: packaged SmolLM2-135M-Instruct
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _our_names(cfg) -> dict[str, str]:
    """Bridge (Transformer Engine) parameter name -> our full-state-dict name."""
    from megatron_reflect.convert.mapping import rules

    names = {}
    for rule in rules(cfg):
        if rule.layer is not None:
            names[rule.dist.replace("decoder.layers.", f"decoder.layers.{rule.layer}.", 1)] = rule.megatron
        names[rule.megatron] = rule.megatron
    return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf-dir", default=None, help="Hugging Face Llama directory (default: packaged SmolLM2)")
    p.add_argument("--tolerance", type=float, default=0.0, help="max abs difference allowed per tensor")
    args = p.parse_args(argv)
    try:
        from megatron.bridge import AutoBridge
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available here"
        print(f"SKIP: megatron.bridge is not importable here ({type(exc).__name__}: {exc})")
        return 0

    from megatron_reflect.convert.importer import MegatronView, read_hf_config
    from megatron_reflect.convert.tensor_io import HFWeights
    from megatron_reflect.packaged import smollm2_hf_dir
    from megatron_reflect.runtime import ParallelConfig, init_runtime

    hf_dir = Path(args.hf_dir) if args.hf_dir else smollm2_hf_dir()
    init_runtime(ParallelConfig())
    _, cfg = read_hf_config(hf_dir)
    provider = AutoBridge.from_hf_pretrained(str(hf_dir)).to_megatron_provider(load_weights=True)
    provider.tensor_model_parallel_size = 1
    provider.pipeline_model_parallel_size = 1
    provider.finalize()
    [model] = provider.provide_distributed_model(wrap_with_ddp=False)
    ours = MegatronView(HFWeights(hf_dir), cfg, cfg.padded_vocab_size(1))
    names = _our_names(cfg)
    worst, checked = 0.0, 0
    for name, param in model.named_parameters():
        while name.startswith("module."):
            name = name[len("module."):]
        if name not in names:
            print(f"FAIL: Bridge parameter {name} has no counterpart in our mapping")
            return 1
        mine = ours[names[name]]
        theirs = param.detach().float().cpu()
        diff = float((mine[: theirs.shape[0]].float() - theirs).abs().max())
        worst, checked = max(worst, diff), checked + 1
        if diff > args.tolerance:
            print(f"FAIL: {name}: max abs diff {diff:.3e}")
            return 1
    print(f"OK: {checked} parameters equal to Megatron-Bridge's conversion (max abs diff {worst:.3e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
