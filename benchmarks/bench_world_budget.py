"""Sizing `make demo`: what one MedSafetyWorld model costs with the project's trainer.

Builds a world's filter and reflect datasets (through the pipeline), then per model shape
runs the project trainer (megatron-core GPTModel, one thread) for two step counts on the
reflect data and takes the difference (start-up excluded), next to a plain-PyTorch model of
the same shape (RMSNorm, fused SDPA attention, SwiGLU, tied embeddings) trained in this
process on random tokens: the ratio is the trainer's overhead per token.  ``--precision``
adds the trainer in bf16 (bf16 weights, fp32 masters) and its speed-up over fp32 in the same
process.  All times are
process CPU seconds (less sensitive than wall time to other jobs on a shared machine; the
load average is printed).  Then the per-model fixed costs (export, evaluation, SFT) of one
real job, and the projected demo time for the frozen configuration.

    python benchmarks/bench_world_budget.py                      # shapes 2x64, 3x96, 4x128
    python benchmarks/bench_world_budget.py --shapes 2x64 --batch 32,64,128
    python benchmarks/bench_world_budget.py --shapes 2x64 --precision fp32,bf16
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def plain_torch_tokens_per_s(model_cfg, batch: int, seq: int, steps: int = 20) -> float:
    """Tokens per CPU second of a plain-PyTorch model of the same shape (the baseline)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    h, f, nh, v = model_cfg.hidden_size, model_cfg.ffn_hidden_size, model_cfg.num_attention_heads, 640

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.n1, self.n2 = nn.RMSNorm(h), nn.RMSNorm(h)
            self.qkv, self.o = nn.Linear(h, 3 * h, bias=False), nn.Linear(h, h, bias=False)
            self.gu, self.d = nn.Linear(h, 2 * f, bias=False), nn.Linear(f, h, bias=False)

        def forward(self, x):
            b, s, _ = x.shape
            q, k, w = self.qkv(self.n1(x)).view(b, s, 3, nh, h // nh).permute(2, 0, 3, 1, 4)
            x = x + self.o(F.scaled_dot_product_attention(q, k, w, is_causal=True).transpose(1, 2).reshape(b, s, h))
            g, u = self.gu(self.n2(x)).chunk(2, -1)
            return x + self.d(F.silu(g) * u)

    emb = nn.Embedding(v, h)
    blocks = nn.ModuleList([Block() for _ in range(model_cfg.num_layers)])
    norm = nn.RMSNorm(h)
    params = list(emb.parameters()) + list(blocks.parameters()) + list(norm.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    x = torch.randint(v, (batch, seq + 1))
    for i in range(steps + 3):
        if i == 3:
            c0 = time.process_time()
        z = emb(x[:, :-1])
        for blk in blocks:
            z = blk(z)
        loss = F.cross_entropy((norm(z) @ emb.weight.T).reshape(-1, v), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * batch * seq / (time.process_time() - c0)


def trainer_tokens_per_s(cfg, steps: int) -> float:
    """Tokens per CPU second of the project trainer on the reflect data (difference of two runs)."""
    from megatron_reflect.train.loop import train
    from megatron_reflect.world.experiment import train_config

    def run(n: int, tag: str) -> float:
        tcfg = train_config(dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, train_steps=n,
                                                                                    warmup_steps=1)), 0, "reflect")
        tcfg = dataclasses.replace(tcfg, run_dir=str(Path(cfg.out_dir) / f"run-{tag}-{n}"),
                                   checkpoint=dataclasses.replace(tcfg.checkpoint, save_at_end=False, save_interval=0,
                                                                  resume=False, save_dir=None),
                                   logging=dataclasses.replace(tcfg.logging, log_interval=n))
        c0 = time.process_time()
        train(tcfg)
        return time.process_time() - c0

    tag = f"{cfg.model.num_layers}x{cfg.model.hidden_size}-{cfg.pretrain.batch_size}-{cfg.pretrain.precision}"
    short, long = run(steps // 4, tag), run(steps, tag)
    return (steps - steps // 4) * cfg.pretrain.batch_size * cfg.pretrain.seq_length / (long - short)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="2x64,3x96,4x128")
    p.add_argument("--batch", default="64", help="micro-batch sizes (sequences of 128 tokens)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--precision", default="", help="trainer precisions to compare, e.g. fp32,bf16 (default: the "
                   "frozen configuration's)")
    a = p.parse_args()
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from demo import FROZEN, load_frozen

    from megatron_reflect.world.experiment import build_data, run_job, world_model

    frozen, _ = load_frozen(FROZEN)
    print(f"load average at start: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        base = dataclasses.replace(frozen, out_dir=tmp, seeds=(0,), variants=("filter", "reflect"))
        c0 = time.process_time()
        build_data(base, 0)
        print(f"data (world + 2 variants): {time.process_time() - c0:.1f} CPU s")
        for shape in a.shapes.split(","):
            layers, width = (int(x) for x in shape.split("x"))
            for b in (int(x) for x in a.batch.split(",")):
                cfg = dataclasses.replace(base, model=world_model(layers, width),
                                          pretrain=dataclasses.replace(base.pretrain, batch_size=b))
                plain = plain_torch_tokens_per_s(cfg.model, b, cfg.pretrain.seq_length)
                first = None
                for prec in [x for x in a.precision.split(",") if x] or [cfg.pretrain.precision]:
                    ours = trainer_tokens_per_s(dataclasses.replace(
                        cfg, pretrain=dataclasses.replace(cfg.pretrain, precision=prec)), a.steps)
                    first = first or ours
                    print(f"{shape} batch {b}x{cfg.pretrain.seq_length} {prec}: trainer {ours:,.0f} tokens/CPU-s, "
                          f"plain torch (fp32) {plain:,.0f}; ratio trainer/plain {ours / plain:.2f}"
                          + (f"; vs the first precision {ours / first:.2f}x" if ours is not first else ""))
        # the fixed costs of one job at the frozen size, with a short pretraining
        short = dataclasses.replace(base, pretrain=dataclasses.replace(base.pretrain, train_steps=20, warmup_steps=2))
        r = run_job(short, 0, "reflect", log=lambda _: None)
        print("per-model fixed costs (CPU s):", {k: v for k, v in r["timing"].items()})
        tps = trainer_tokens_per_s(dataclasses.replace(base, out_dir=tmp), a.steps)
    fixed = sum(r["timing"].values())
    models = len(frozen.seeds) * len(frozen.variants)
    per_model = frozen.pretrain.tokens / tps + fixed
    print(f"frozen demo: {models} models x ({frozen.pretrain.tokens / 1e6:.2f} M tokens / {tps:,.0f} tokens/s + "
          f"{fixed:.0f} s) / {frozen.jobs} workers = {models * per_model / frozen.jobs / 60:.1f} min, plus data "
          f"(~{len(frozen.seeds)} x 5 s / {frozen.jobs}) and worker start-up")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
