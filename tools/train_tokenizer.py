#!/usr/bin/env python
"""Train a SentencePiece tokenizer on a corpus (jsonl/.gz/.zst/parquet), and optionally export it
as a Hugging Face tokenizer directory.

Example:
  tools/train_tokenizer.py --input 'corpus/*.jsonl' --output-prefix tok/sp8k --vocab-size 8000 \\
      --reflection-tags --hf-dir tok/sp8k-hf
Then preprocess with  --tokenizer-type sentencepiece --tokenizer-model tok/sp8k.model .
"""

from __future__ import annotations

import argparse
import sys
from itertools import islice
from typing import Iterator

from megatron_reflect.errors import ReflectError


def _texts(patterns: list[str], json_keys: list[str], limit: int | None) -> Iterator[str]:
    from tqdm import tqdm

    from megatron_reflect.data.preprocess import expand_inputs
    from megatron_reflect.data.readers import Skipped, iter_records

    def all_texts() -> Iterator[str]:
        for path in expand_inputs(patterns):
            for rec in iter_records(path, json_keys):
                if not isinstance(rec, Skipped):
                    yield rec.text

    yield from tqdm(islice(all_texts(), limit), desc="training texts", unit="doc", total=limit)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, help="corpus files or globs")
    p.add_argument("--json-keys", nargs="+", default=["text"], help="record keys holding the text (joined)")
    p.add_argument("--output-prefix", required=True, help="writes <prefix>.model (and <prefix>.json)")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe")
    p.add_argument("--max-documents", type=int, default=None, help="train on the first N documents only")
    p.add_argument("--reflection-tags", action="store_true",
                   help="make the reflection template's tags (<think>, </think>) single user-defined pieces")
    p.add_argument("--hf-dir", default=None, help="also write an equivalent Hugging Face tokenizer directory")
    args = p.parse_args(argv)
    from megatron_reflect.data.tokenizers import SentencePieceTokenizer, train_sentencepiece
    from megatron_reflect.reflection import DEFAULT_TEMPLATE

    try:
        symbols = (DEFAULT_TEMPLATE.open_tag, DEFAULT_TEMPLATE.close_tag) if args.reflection_tags else ()
        model = train_sentencepiece(_texts(args.input, args.json_keys, args.max_documents), args.output_prefix,
                                    args.vocab_size, args.model_type, symbols)
        print(f"wrote {model}")
        if args.hf_dir:
            SentencePieceTokenizer(model).save_hf(args.hf_dir)
            print(f"wrote {args.hf_dir} (Hugging Face tokenizer, ids verified identical)")
    except ReflectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
