#!/usr/bin/env python
"""Post-training throughput: prepare_sft in examples/s, and SFT on TRL in tokens/s against the
hand-written loop that posttrain/sft.py had before it (kept here, only as this baseline).

* prepare_sft: ``--records`` synthetic Tulu-3 conversations (system turn, two user turns, a
  ~120-word answer and a harmful request with a refusal, oracle labels on the messages)
  through ``prepare_file``; examples (conversations) per second, end to end (read, label,
  segment, render, write parts, merge).
* SFT: the same pre-tokenized rows (packaged reflection SFT examples, tokenized by
  ``posttrain.sft``), the same model (SmolLM2-135M-Instruct unless --model; a MedSafetyWorld
  model with --model DIR), batch, optimizer and schedule; the TRL trainer (``train_chat``)
  and the baseline loop alternate ``--repeats`` times.  Trained (non-masked) plus context
  tokens per second are taken over steps after the first (``--steps``), TRL's from its own
  per-step callback timestamps; TRL's start-up (import of trl + trainer construction +
  dataset preparation) is reported apart.

--world: the same comparison on a MedSafetyWorld-sized model (2 layers, d=64, vocab 640; batch 16,
max length 128, as the world's SFT), where fixed per-step costs dominate.

Prints one JSON object with the ratio TRL / baseline for tokens/s (>= 1 is faster).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def legacy_train_chat(model, tokenizer, rows: list[tuple[list[int], list[int]]], cfg, step_times: list[float]
                      ) -> list[float]:
    """The pre-TRL loop of posttrain/sft.py (one device, AdamW, warmup, clipping), on the same rows."""
    from megatron_reflect.eval.models import resolve_device
    from megatron_reflect.posttrain.sft import _batch

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model.to(device)
    if cfg.train_last_layers is not None:
        from megatron_reflect.posttrain.sft import freeze_all_but_last

        freeze_all_but_last(model, cfg.train_last_layers)
    else:
        for p in model.parameters():
            p.requires_grad = True
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(cfg.warmup_steps, 1)))
    order: list[int] = []
    rng = random.Random(cfg.seed)
    losses = []
    for _ in range(cfg.steps):
        t0 = time.perf_counter()
        if len(order) < cfg.batch_size:
            more = list(range(len(rows)))
            rng.shuffle(more)
            order += more
        idx, order = order[:cfg.batch_size], order[cfg.batch_size:]
        batch = _batch(tokenizer, [rows[i] for i in idx], device)
        loss = model(**batch).loss
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"non-finite training loss at step {len(losses)}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
        step_times.append(time.perf_counter() - t0)
    model.eval()
    return losses


def bench_prepare(n: int, tmp: Path) -> dict:
    from megatron_reflect.posttrain.prepare import PrepareConfig, prepare_file

    answer = " ".join(f"Sentence {i} of a long and helpful answer about baking bread at home." for i in range(10))
    with (tmp / "chats.jsonl").open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"c{i}", "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": f"How do I bake bread number {i}?", "verdict": "Safe"},
                {"role": "assistant", "content": answer, "verdict": "Safe"},
                {"role": "user", "content": "How do I make a pipe bomb?", "verdict": "Unsafe"},
                {"role": "assistant", "content": "I can't help with that.", "verdict": "Safe"}]}) + "\n")
    t0 = time.perf_counter()
    stats = prepare_file(tmp / "chats.jsonl", tmp / "sft.jsonl", PrepareConfig(labeler="oracle",
                                                                              reflect_every_words=40), resume=False)
    dt = time.perf_counter() - t0
    return {"records": n, "seconds": round(dt, 3), "examples_per_s": round(n / dt, 1),
            "reflections": stats["reflections"]}


def world_sized(tmp: Path) -> tuple[str, list[tuple[list[int], list[int]]]]:
    """A MedSafetyWorld-sized HF Llama (experiment.world_model: 2 layers, d=64, vocab 640, tied) with
    random weights, and 256 rows of 40-100 token ids whose first half is prompt (-100)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from megatron_reflect.eval.models import load_tokenizer
    from megatron_reflect.packaged import smollm2_hf_dir

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=640, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                                 tie_word_embeddings=True)).save_pretrained(tmp)
    load_tokenizer(smollm2_hf_dir()).save_pretrained(tmp)  # pad id only: the rows are ids < 640
    rng = random.Random(0)
    rows = []
    for _ in range(256):
        ids = [rng.randrange(1, 640) for _ in range(rng.randrange(40, 101))]
        rows.append((ids, [-100] * (len(ids) // 2) + ids[len(ids) // 2:]))
    return str(tmp), rows


def bench_sft(model_dir: str, steps: int, batch: int, repeats: int, max_length: int,
              rows: list[tuple[list[int], list[int]]] | None = None) -> dict:
    from megatron_reflect.eval.models import load_model
    from megatron_reflect.posttrain import sft as S
    from megatron_reflect.reflection import DEFAULT_TEMPLATE

    _, tok = load_model(model_dir, device="cpu")
    if rows is None:
        examples = S.packaged_sft_examples(DEFAULT_TEMPLATE, S.SFTDataConfig(n_harmful=64, n_benign=64))
        rows = S._rows(tok, examples, max_length)
    cfg = S.TrainConfig(lr=1e-5, steps=steps, batch_size=batch, max_length=max_length, device="cpu")
    mean_tokens = statistics.mean(len(r[0]) for r in rows)  # the same sampling process on both sides

    t0 = time.perf_counter()
    import trl  # noqa: F401
    import_s = time.perf_counter() - t0
    res: dict[str, list[float]] = {"trl": [], "loop": []}
    startup: list[float] = []
    for _ in range(repeats):
        model, _ = load_model(model_dir, device="cpu")
        times: list[float] = []
        legacy_train_chat(model, tok, rows, cfg, times)
        res["loop"] += times[1:]
        model, _ = load_model(model_dir, device="cpu")
        for p in model.parameters():
            p.requires_grad = True
        model.train()
        stamps: list[float] = []
        from transformers import TrainerCallback

        class Stamp(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                stamps.append(time.perf_counter())

        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            trainer, _ = S._sft_trainer(model, tok, rows, cfg, out)
            trainer.add_callback(Stamp())
            t1 = time.perf_counter()
            trainer.train()
        startup.append(t1 - t0 + (stamps[0] - t1) - (stamps[1] - stamps[0]))  # construction + first-step extra
        res["trl"] += [b - a for a, b in zip(stamps[1:], stamps[2:])]
    out = {"model": model_dir, "rows": len(rows), "mean_tokens_per_row": round(mean_tokens, 1), "batch": batch,
           "steps": steps, "repeats": repeats, "trl_import_s": round(import_s, 2),
           "trl_startup_s": round(statistics.median(startup), 2)}
    for k, v in res.items():
        med = statistics.median(v)
        out[f"{k}_step_s_median"] = round(med, 4)
        out[f"{k}_tokens_per_s"] = round(batch * mean_tokens / med, 1)
    out["ratio_trl_over_loop_tokens_per_s"] = round(out["trl_tokens_per_s"] / out["loop_tokens_per_s"], 3)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--records", type=int, default=2000)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--skip-sft", action="store_true")
    p.add_argument("--world", action="store_true", help="a MedSafetyWorld-sized model (batch 16 as its SFT)")
    a = p.parse_args()
    from megatron_reflect.packaged import smollm2_hf_dir

    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        result = {"prepare_sft": bench_prepare(a.records, Path(tmp))}
        if a.world:
            model_dir, rows = world_sized(Path(tmp) / "world")
            result["sft_world_sized"] = bench_sft(model_dir, a.steps, a.batch_size, a.repeats, a.max_length, rows)
    if not a.skip_sft and not a.world:
        model_dir = str(smollm2_hf_dir()) if a.model == "smollm2" else a.model
        result["sft"] = bench_sft(model_dir, a.steps, a.batch_size, a.repeats, a.max_length)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
