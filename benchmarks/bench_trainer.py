#!/usr/bin/env python
"""Trainer overhead: our ``train()`` step vs a bare megatron-core loop, same model and batch.

Both sides run the same GPTModel (tiny preset unless --preset), micro batch, number of
microbatches and torch AdamW on this machine's CPU, in one process:

* bare: ``get_forward_backward_func`` with a minimal loss (masked mean cross entropy from
  GPTModel's own per-token loss), ``optimizer.step()``; nothing else;
* ours: ``megatron_reflect.train.loop.train`` (reflection-aware loss and report, per-token
  normalisation hook, clipping, LR schedule, loss reduction, logging to metrics.jsonl; no
  TensorBoard, no checkpoints), fed an in-memory dataset repeating the same sample.

Per-step times are taken over the second half of each run (the first half warms up:
allocator, torch.compile of SwiGLU); ours from train()'s own per-step records (logging
every step, so writing metrics.jsonl is included).  Runs alternate ``--repeats`` times; the
20th percentile and the median of all timed steps are compared (on a shared machine the
low percentile is the steadier estimate of the cost itself).  Prints the ratio ours / bare (target <= 1.05).

``--attention`` also times ``train()`` with megatron's unfused ``DotProductAttention``
(``precision.attention=megatron``) against the default SDPA core attention, in
``--attention-dtype`` (the MedSafetyWorld demo trains in bf16), and prints that speed ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

SEQ, MBS, MICRO, VOCAB = 128, 4, 2, 384


class RepeatedSample(torch.utils.data.Dataset):
    """One fixed sample (with a few reflection tokens), ``n`` times."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        text = torch.randint(0, VOCAB, (SEQ + 1,), generator=g)
        meta = torch.zeros(SEQ, dtype=torch.uint8)
        meta[10:16] = 0x01
        meta[11] = 0x11
        self.sample = {"tokens": text[:-1], "labels": text[1:], "loss_mask": torch.ones(SEQ),
                       "position_ids": torch.arange(SEQ), "reflection_meta": meta}
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.sample


def bare_step_times(preset: str, steps: int) -> list[float]:
    """Seconds per step of a minimal megatron-core training loop (second half of ``steps``)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_reflect.model import build_gpt_model, get_preset
    from megatron_reflect.runtime import ParallelConfig, init_runtime, shutdown_runtime

    init_runtime(ParallelConfig(), seed=1)
    try:
        model_cfg = dataclasses.replace(get_preset(preset), vocab_size=VOCAB)
        model = build_gpt_model(model_cfg, ParallelConfig())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)  # as the trainer's
        batch = torch.utils.data.default_collate([RepeatedSample(1)[0]] * MBS)

        def forward_step(data_iterator, model):
            b = next(data_iterator)
            per_token = model(b["tokens"], b["position_ids"], None, labels=b["labels"])

            def loss_func(output):
                loss = (output.float() * b["loss_mask"]).sum() / b["loss_mask"].sum()
                return loss, {"loss": loss.detach().clone()}

            return per_token, loss_func

        fwd_bwd = get_forward_backward_func()
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            fwd_bwd(forward_step_func=forward_step, data_iterator=iter([batch] * MICRO), model=[model],
                    num_microbatches=MICRO, seq_length=SEQ, micro_batch_size=MBS, forward_only=False)
            opt.step()
            times.append(time.perf_counter() - start)
        return times[steps // 2:]
    finally:
        shutdown_runtime()


def ours_step_times(preset: str, steps: int, run_dir: Path, clip_grad: float, attention: str = "sdpa",
                    dtype: str = "fp32") -> list[float]:
    """Seconds per step of ``train()`` (second half of ``steps``), from its own per-step log records."""
    from megatron_reflect.config import resolve
    from megatron_reflect.model import get_preset
    from megatron_reflect.train.loop import train
    from megatron_reflect.train.recipes import get_recipe

    cfg = resolve(get_recipe("tiny-cpu"), None, [
        f"run_dir={run_dir}", f"data.seq_length={SEQ}", f"schedule.micro_batch_size={MBS}",
        f"schedule.global_batch_size={MBS * MICRO}", f"schedule.train_steps={steps}", "schedule.eval_interval=0",
        "logging.log_interval=1", "logging.tensorboard=false", "checkpoint.save_interval=0",
        "checkpoint.save_at_end=false", "checkpoint.resume=false", f"optim.clip_grad={clip_grad}",
        f"precision.attention={attention}", f"precision.dtype={dtype}"])
    cfg = dataclasses.replace(cfg, model=get_preset(preset))
    result = train(cfg, datasets=(RepeatedSample(steps * MBS * MICRO), None),
                   info={"tokenizer": {"vocab_size": VOCAB}})
    records = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    return [SEQ * MBS * MICRO / r["tokens_per_s"] for r in records[steps // 2:]]


def _summary(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered), ordered[len(ordered) // 5]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=80, help="steps per run (timed: the second half)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--attention", action="store_true", help="also time SDPA against megatron's attention")
    parser.add_argument("--attention-dtype", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    bare: list[float] = []
    ours: list[float] = []  # the same math as the bare loop: no gradient clipping
    ours_clip: list[float] = []  # the recipe's default, clip_grad=1.0 (a grad-norm pass the bare loop lacks)
    attn: dict[str, list[float]] = {"megatron": [], "sdpa": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            bare += bare_step_times(args.preset, args.steps)
            ours += ours_step_times(args.preset, args.steps, Path(tmp) / f"run{r}", clip_grad=0.0)
            ours_clip += ours_step_times(args.preset, args.steps, Path(tmp) / f"clip{r}", clip_grad=1.0)
            if args.attention:
                for attention in ("megatron", "sdpa"):
                    attn[attention] += ours_step_times(args.preset, args.steps, Path(tmp) / f"{attention}{r}",
                                                       clip_grad=0.0, attention=attention, dtype=args.attention_dtype)
    (b_med, b_p20) = _summary(bare)
    print(f"preset {args.preset}, seq {SEQ}, micro batch {MBS} x {MICRO} microbatches, 1 thread, CPU; "
          f"{len(bare)} timed steps each")
    print(f"bare megatron-core loop:  median {1000 * b_med:.2f} ms/step, 20th percentile {1000 * b_p20:.2f}")
    for name, times in (("train(), no clipping", ours), ("train(), clip_grad=1.0", ours_clip)):
        o_med, o_p20 = _summary(times)
        print(f"{name:<24}  median {1000 * o_med:.2f} ms/step, 20th percentile {1000 * o_p20:.2f}; "
              f"ratio to bare {o_p20 / b_p20:.3f} (20th pct), {o_med / b_med:.3f} (median); target <= 1.05")
    if args.attention:
        (m_med, m_p20), (s_med, s_p20) = _summary(attn["megatron"]), _summary(attn["sdpa"])
        print(f"train() in {args.attention_dtype}, megatron DotProductAttention: median {1000 * m_med:.2f} ms/step, "
              f"20th percentile {1000 * m_p20:.2f}; SDPA: median {1000 * s_med:.2f}, 20th percentile "
              f"{1000 * s_p20:.2f}; SDPA speed-up x{m_p20 / s_p20:.3f} (20th pct), x{m_med / s_med:.3f} (median)")

if __name__ == "__main__":
    main()
