#!/usr/bin/env python
"""Evaluation throughput: batched generation (left padding) vs one prompt at a time, in one run.

  python benchmarks/bench_eval.py [--model smollm2] [--prompts 8] [--max-new-tokens 24] [--batch-size 16]

Both passes generate greedily for the same AdvBench prompts through the evaluation's own
``generate`` (reflection monitor on), alternating the two modes ``--repeats`` times (best
wall time kept, CPU seconds shown too, since the machine may be shared); prints seconds,
prompts/s, generated tokens/s, the speed-up ratio, and how many completions are
token-identical between the two passes
(batched fp32 matmuls may differ in the last bits, which can flip a greedy choice).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=2, help="alternating repeats; the best wall time counts")
    a = p.parse_args()
    import torch

    from megatron_reflect.eval.data import advbench
    from megatron_reflect.eval.generation import GenerationConfig, generate
    from megatron_reflect.eval.models import load_model, load_template
    from megatron_reflect.packaged import smollm2_hf_dir

    model_dir = smollm2_hf_dir() if a.model == "smollm2" else Path(a.model)
    model, tok = load_model(model_dir, device=a.device)
    template = load_template(model_dir)
    prompts = [x.text for x in advbench(limit=a.prompts, seed=0)]
    generate(model, tok, prompts[:2], template, GenerationConfig(max_new_tokens=4, batch_size=2))  # warm-up
    results: dict[str, tuple[float, float, list]] = {}
    modes = (("one-at-a-time", 1), ("batched", a.batch_size))
    for _ in range(a.repeats):  # alternate the modes so load from other processes hits both alike
        for name, bs in modes:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t, c = time.perf_counter(), time.process_time()
            gens = generate(model, tok, prompts, template, GenerationConfig(max_new_tokens=a.max_new_tokens,
                                                                             batch_size=bs))
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            sec, cpu = time.perf_counter() - t, time.process_time() - c
            if name not in results or sec < results[name][0]:
                results[name] = (sec, cpu, gens)
    for name, bs in modes:
        sec, cpu, gens = results[name]
        ntok = sum(len(g.token_ids) for g in gens)
        print(f"{name:14s} batch={bs:3d}  best wall {sec:7.2f} s (CPU {cpu:7.2f} s)  "
              f"{len(prompts) / sec:7.2f} prompts/s  {ntok / sec:8.1f} tokens/s  ({ntok} tokens)")
    one, batched = results["one-at-a-time"], results["batched"]
    same = sum(x.token_ids == y.token_ids for x, y in zip(one[2], batched[2]))
    print(f"device={model.device} threads={torch.get_num_threads()} prompts={len(prompts)} "
          f"max_new_tokens={a.max_new_tokens}")
    print(f"speed-up (batched / one-at-a-time): wall {one[0] / batched[0]:.2f}x, CPU {one[1] / batched[1]:.2f}x; "
          f"identical completions {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
