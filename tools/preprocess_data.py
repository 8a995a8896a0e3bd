#!/usr/bin/env python
"""Corpus -> paired Megatron indexed dataset with safety reflections (Megatron-LM's flag names).

Writes <prefix>_text_document.{bin,idx} (tokens, a stock Megatron dataset), <prefix>_reflect_meta.{bin,idx}
(one uint8 reflection code per token, same document structure) and <prefix>_stats.json.

  tools/preprocess_data.py --input corpus.jsonl --output-prefix data/corpus
      default: packaged SmolLM2 tokenizer, the embedded classifier labeler, reflect mode
  tools/preprocess_data.py --input 'shards/*.jsonl.zst' --output-prefix data/web --labels-dir labels/ --workers 8
      reuse labels stored by tools/label_corpus.py (segment text hashes are checked)
  tools/preprocess_data.py --input world.jsonl --output-prefix data/world --labeler oracle \\
      --mode rewrite --rewriter exact

Bad records (malformed JSON, missing key, empty text, invalid UTF-8, gigantic document, labeler
or endpoint failure) are skipped and listed with file and line in the stats; --strict stops at the
first one instead.  Work is committed every --chunk-tokens tokens: --resume after a kill (even a
SIGKILL) keeps the finished shards (input file x partition) and continues a partial one from its
last commit, so at most one chunk is redone.  Plain mode, stored labels and the oracle labeler run
in one process with --workers tokenizer threads; an in-line labeler uses --workers processes.
Neither torch nor megatron.core is imported.
"""

from __future__ import annotations

import argparse
import json
import sys

from megatron_reflect.errors import ReflectError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = p.add_argument_group("input/output (Megatron-LM names)")
    io.add_argument("--input", nargs="+", required=True, help="jsonl/.jsonl.gz/.jsonl.zst/parquet files or globs")
    io.add_argument("--output-prefix", required=True, help="path prefix of the output dataset")
    io.add_argument("--json-keys", nargs="+", default=["text"], help="keys holding the text (joined by a blank line)")
    io.add_argument("--id-key", default="id", help="key holding the document id (default: file:line)")
    io.add_argument("--tokenizer-type", default="hf",
                    help="hf|HuggingFaceTokenizer or sentencepiece|SentencePieceTokenizer|GPTSentencePieceTokenizer")
    io.add_argument("--tokenizer-model", default=None,
                    help="HF tokenizer dir or SentencePiece .model (default: the packaged SmolLM2 tokenizer)")
    io.add_argument("--append-eod", action=argparse.BooleanOptionalAction, default=True,
                    help="append the EOD token to each document (default: on; packing needs it)")
    io.add_argument("--workers", type=int, default=1,
                    help="tokenizer threads (labeller processes when an in-line labeler runs)")
    io.add_argument("--partitions", type=int, default=1,
                    help="split each input file into N shards (record i goes to shard i mod N), merged at the end")
    io.add_argument("--max-chars", type=int, default=None, help="skip documents longer than this")
    r = p.add_argument_group("reflections")
    r.add_argument("--mode", default="reflect", choices=["reflect", "filter", "rewrite", "plain"])
    r.add_argument("--labeler", default="classifier", help="oracle | classifier | openai | hf")
    r.add_argument("--labeler-options", default="{}",
                   help='JSON options of the labeler, e.g. \'{"base_url": "http://host:8000/v1", "model": "guard"}\'')
    r.add_argument("--labels-dir", default=None, help="use labels stored by tools/label_corpus.py instead of labelling")
    r.add_argument("--segment-words", type=int, default=100, help="at most this many words per segment")
    r.add_argument("--open-tag", default="<think>")
    r.add_argument("--close-tag", default="</think>")
    r.add_argument("--special-tokens", action="store_true", help="register the tags as special tokens")
    r.add_argument("--no-leading-space", action="store_true", help="no space before the open tag")
    r.add_argument("--no-trailing-space", action="store_true", help="no space after the close tag")
    r.add_argument("--filter-max-flagged", type=int, default=0,
                   help="filter mode: keep documents with at most N Unsafe/Controversial segments")
    r.add_argument("--filter-min-score", type=float, default=None,
                   help="filter/rewrite: a segment counts as flagged only if its score is at least this")
    r.add_argument("--rewriter", default="exact", choices=["exact", "openai"], help="rewrite mode's rewriter")
    r.add_argument("--rewriter-options", default="{}", help='JSON, e.g. \'{"base_url": "...", "model": "..."}\'')
    c = p.add_argument_group("control")
    c.add_argument("--strict", action="store_true", help="stop at the first bad record instead of skipping it")
    c.add_argument("--resume", action="store_true",
                   help="continue a killed run: keep its finished shards, resume a partial one at its last chunk")
    c.add_argument("--batch-docs", type=int, default=64, help="documents per worker task")
    c.add_argument("--chunk-tokens", type=int, default=4_000_000,
                   help="commit the work every N tokens (a killed run redoes at most one chunk)")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace):
    from megatron_reflect.data.preprocess import PreprocessConfig
    from megatron_reflect.errors import ConfigError
    from megatron_reflect.reflection import ReflectionTemplate

    try:
        labeler_options = json.loads(args.labeler_options)
        rewriter_options = json.loads(args.rewriter_options)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--labeler-options/--rewriter-options must be JSON objects: {e}") from None
    template = ReflectionTemplate(open_tag=args.open_tag, close_tag=args.close_tag,
                                  leading_space=not args.no_leading_space, trailing_space=not args.no_trailing_space,
                                  special_tokens=args.special_tokens)
    return PreprocessConfig(
        input=args.input, output_prefix=args.output_prefix, json_keys=tuple(args.json_keys), id_key=args.id_key,
        tokenizer_type=args.tokenizer_type, tokenizer_model=args.tokenizer_model, append_eod=args.append_eod,
        mode=args.mode, labeler=args.labeler, labeler_options=labeler_options, labels_dir=args.labels_dir,
        segment_words=args.segment_words, template=template, filter_max_flagged=args.filter_max_flagged,
        filter_min_score=args.filter_min_score, rewriter=args.rewriter, rewriter_options=rewriter_options,
        workers=args.workers, partitions=args.partitions, batch_docs=args.batch_docs, chunk_tokens=args.chunk_tokens,
        max_chars=args.max_chars,
        strict=args.strict, resume=args.resume, progress=not args.no_progress)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from megatron_reflect.data.preprocess import preprocess

    try:
        stats = preprocess(config_from_args(args))
    except ReflectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = {k: stats[k] for k in ("documents", "filtered_documents", "tokens", "reflection_tokens",
                                     "overhead_pct", "verdicts", "skipped_count")}
    summary.update(stats.get("run", {"documents_written": 0, "documents_resumed": stats["documents"]}))
    print(json.dumps(summary, indent=1))
    for s in stats["skipped"][:10]:
        print(f"skipped {s['source']}:{s['line']}: {s['reason']}", file=sys.stderr)
    print(f"wrote {args.output_prefix}_text_document.{{bin,idx}}, {args.output_prefix}_reflect_meta.{{bin,idx}}, "
          f"{args.output_prefix}_stats.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
