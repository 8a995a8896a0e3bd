#!/usr/bin/env python
"""Print documents or training samples of a reflection dataset, reflections highlighted.

  tools/inspect_dataset.py data/corpus                       # stats + first 3 documents
  tools/inspect_dataset.py data/corpus --documents 0 5 9 --tokens   # + each token with its metadata code
  tools/inspect_dataset.py data/corpus --samples 2 --seq-length 256 # packed samples as the trainer sees them

Reflections are coloured (green Safe, red Unsafe, yellow Controversial; the verdict token
underlined) on a terminal, and written as [[...]] with the verdict token as {...} otherwise
(or with --brackets).  Metadata codes: megatron_reflect/reflection.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Sequence

import numpy as np

from megatron_reflect.errors import ReflectError

COLOURS = {1: "\033[32m", 2: "\033[31m", 3: "\033[33m"}
UNDERLINE, RESET = "\033[4m", "\033[0m"


def render_tokens(tokenizer, tokens: Sequence[int], meta: Sequence[int], ansi: bool) -> str:
    """The decoded text of ``tokens`` with reflection runs and verdict tokens marked."""
    from megatron_reflect.reflection import KIND_MASK, VERDICT_FLAG

    out: list[str] = []
    i = 0
    while i < len(tokens):
        kind = int(meta[i]) & KIND_MASK
        j = i
        while j < len(tokens) and (int(meta[j]) & KIND_MASK) == kind:
            j += 1
        if kind == 0:
            out.append(tokenizer.decode(tokens[i:j]))
        else:
            parts = []
            for k in range(i, j):
                text = tokenizer.decode(tokens[k:k + 1])
                if int(meta[k]) & VERDICT_FLAG:
                    text = f"{UNDERLINE}{text}{RESET}{COLOURS[kind]}" if ansi else "{" + text + "}"
                parts.append(text)
            body = "".join(parts)
            out.append(f"{COLOURS[kind]}{body}{RESET}" if ansi else f"[[{body}]]")
        i = j
    return "".join(out)


def token_table(tokenizer, tokens: Sequence[int], meta: Sequence[int]) -> str:
    from megatron_reflect.reflection import KIND_MASK, VERDICT_FLAG, VERDICT_OF_KIND

    rows = []
    for pos, (t, m) in enumerate(zip(tokens, meta)):
        kind = int(m) & KIND_MASK
        what = "text" if kind == 0 else VERDICT_OF_KIND[kind].value + (" +verdict" if int(m) & VERDICT_FLAG else "")
        rows.append(f"  {pos:6d} {int(t):7d} {int(m):#04x} {what:22s} {tokenizer.decode([int(t)])!r}")
    return "\n".join(["     pos   token meta kind                   text"] + rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prefix", help="dataset prefix (as given to --output-prefix)")
    p.add_argument("--documents", nargs="*", type=int, default=None, help="document indices (default 0 1 2)")
    p.add_argument("--samples", type=int, default=0, help="print N packed training samples instead")
    p.add_argument("--seq-length", type=int, default=128, help="sample length for --samples")
    p.add_argument("--tokens", action="store_true", help="also print each token with its metadata code")
    p.add_argument("--brackets", action="store_true", help="mark reflections with brackets, not colour")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    from megatron_reflect.data.dataset import DataConfig, build_reflect_datasets, read_dataset_info
    from megatron_reflect.data.indexed import PairedIndexedDataset
    from megatron_reflect.data.tokenizers import tokenizer_from_description
    from megatron_reflect.reflection import ReflectionTemplate, is_reflection

    ansi = sys.stdout.isatty() and not args.brackets
    try:
        info = read_dataset_info(args.prefix)
        template = ReflectionTemplate(**{k: tuple(v) if isinstance(v, list) else v
                                         for k, v in info["reflection_template"].items()})
        tokenizer = tokenizer_from_description(info["tokenizer"], template)
        print(json.dumps({k: info.get(k) for k in ("mode", "documents", "tokens", "reflection_tokens",
                                                     "overhead_pct", "verdicts", "skipped_count")}))
        if args.samples:
            cfg = DataConfig(blend=[args.prefix], split="100,0,0", seq_length=args.seq_length)
            train, _, _ = build_reflect_datasets(cfg, (args.samples, 0, 0))
            for i in range(args.samples):
                s = train[i]
                # labels[t] is token t+1, reflection_meta[t] its code: print the label stream
                tokens, meta = s["labels"].numpy(), s["reflection_meta"].numpy()
                print(f"--- sample {i} ({len(tokens)} labels)")
                print(render_tokens(tokenizer, tokens.tolist(), meta.tolist(), ansi))
                if args.tokens:
                    print(token_table(tokenizer, tokens.tolist(), meta.tolist()))
            return 0
        ds = PairedIndexedDataset(args.prefix)
        for d in args.documents if args.documents is not None else range(min(3, len(ds))):
            if not 0 <= d < len(ds):
                print(f"error: document {d} out of range (dataset has {len(ds)})", file=sys.stderr)
                return 2
            tokens, meta = ds.document(d)
            n_refl = int(np.count_nonzero(is_reflection(meta)))
            print(f"--- document {d}: {len(tokens)} tokens, {n_refl} reflection tokens")
            print(render_tokens(tokenizer, tokens.tolist(), meta.tolist(), ansi))
            if args.tokens:
                print(token_table(tokenizer, tokens.tolist(), meta.tolist()))
    except ReflectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
