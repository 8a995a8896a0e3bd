"""Label the segments of corpus files with a safety labeler; one label file per input file.

Each input file (jsonl, .jsonl.gz, .jsonl.zst, parquet) becomes
<labels-dir>/<input name>.labels.parquet, written atomically.  A killed run (even by SIGKILL)
restarts where it stopped: finished label files are kept, partial ones resume from their parts
(--part-segments), and the openai labeler commits each answer to its cache as it arrives, so no
segment that was answered is asked again.  To
shard over a cluster, give each task its own input files (SLURM array: --shard-index
$SLURM_ARRAY_TASK_ID --num-shards N); see docs/LABELING_AT_SCALE.md.

Examples:
  label_corpus.py --input 'data/*.jsonl.zst' --labels-dir labels/ --labeler classifier
  label_corpus.py --input data/a.jsonl --labels-dir labels/ --labeler openai \\
      --endpoint http://gpu-node:8000 --model Qwen/Qwen3Guard-Gen-4B --concurrency 32
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from pathlib import Path

from megatron_reflect.errors import ReflectError


def expand_inputs(patterns: list[str]) -> list[Path]:
    files: list[Path] = []
    for pattern in patterns:
        hits = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        if not hits:
            raise ReflectError(f"--input {pattern!r} matches no file")
        files.extend(Path(h) for h in hits)
    names = [f.name for f in files]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ReflectError(f"input files share names {sorted(dup)}: their label files would collide")
    return files


def labeler_options(args: argparse.Namespace, input_path: Path) -> dict:
    if args.labeler == "classifier":
        opts = {"unsafe_threshold": args.unsafe_threshold, "controversial_threshold": args.controversial_threshold}
        try:
            extra = json.loads(args.labeler_options)
        except json.JSONDecodeError as e:
            raise ReflectError(f"--labeler-options must be a JSON object: {e}") from None
        if not isinstance(extra, dict):
            raise ReflectError("--labeler-options must be a JSON object")
        return {**{k: v for k, v in opts.items() if v is not None}, **extra}
    if args.labeler == "openai":
        from megatron_reflect.data.labelers.openai import GUARD_INSTRUCTION

        cache = args.cache or str(Path(args.labels_dir) / f"{input_path.name}.openai-cache.sqlite")
        return {"endpoint": args.endpoint, "model": args.model, "concurrency": args.concurrency,
                "timeout_s": args.timeout, "max_retries": args.max_retries, "cache_path": cache,
                "instruction": GUARD_INSTRUCTION if args.guard_instruction else None, "fallback": args.fallback}
    if args.labeler == "hf":
        from megatron_reflect.data.labelers.openai import GUARD_INSTRUCTION

        return {"model_dir": args.hf_model_dir, "batch_size": args.batch_size, "fallback": args.fallback,
                "instruction": GUARD_INSTRUCTION if args.guard_instruction else None}
    return {}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = p.add_argument_group("input/output")
    io.add_argument("--input", nargs="+", required=True, help="corpus files or globs (quote globs)")
    io.add_argument("--labels-dir", required=True, help="directory of the .labels.parquet files")
    io.add_argument("--json-keys", nargs="+", default=["text"], help="record keys whose texts are joined (default: text)")
    io.add_argument("--id-key", default="id", help="record key of the document id (default: id; else file:line)")
    io.add_argument("--max-chars", type=int, default=None, help="skip documents longer than this many characters")
    io.add_argument("--shard-index", type=int, default=0, help="this task's index (e.g. $SLURM_ARRAY_TASK_ID)")
    io.add_argument("--num-shards", type=int, default=1, help="input files are dealt round-robin over this many tasks")
    io.add_argument("--no-resume", action="store_true", help="relabel even finished files and discard partial runs")
    io.add_argument("--strict", action="store_true", help="a bad record is an error instead of skipped and counted")
    io.add_argument("--stats", default=None, help="write the per-file stats as JSON here")
    io.add_argument("--part-segments", type=int, default=20_000,
                    help="commit finished documents' labels every N segments (a killed run keeps them)")
    seg = p.add_argument_group("segmentation")
    seg.add_argument("--segment-words", type=int, default=100, help="maximum words per segment (default 100)")
    seg.add_argument("--segment-cjk-chars", type=int, default=200, help="maximum CJK characters per segment")
    lab = p.add_argument_group("labeler")
    lab.add_argument("--labeler", default="classifier", choices=["classifier", "oracle", "openai", "hf"])
    lab.add_argument("--batch-size", type=int, default=64, help="segments per labeler call")
    lab.add_argument("--unsafe-threshold", type=float, default=None, help="classifier: P(unsafe) for Unsafe")
    lab.add_argument("--controversial-threshold", type=float, default=None, help="classifier: P(unsafe) for Controversial")
    lab.add_argument("--labeler-options", default="{}",
                     help='classifier: JSON object of further options, e.g. \'{"artifact_dir": "student/"}\' '
                          '(a distilled artifact) or \'{"model": "hashed"}\' (the fast family)')
    lab.add_argument("--endpoint", help="openai: base URL of an OpenAI-compatible server, e.g. http://host:8000")
    lab.add_argument("--model", default="Qwen/Qwen3Guard-Gen-0.6B", help="openai: served model name")
    lab.add_argument("--concurrency", type=int, default=8, help="openai: requests in flight")
    lab.add_argument("--timeout", type=float, default=60.0, help="openai: seconds per request")
    lab.add_argument("--max-retries", type=int, default=5, help="openai: retries with exponential backoff")
    lab.add_argument("--cache", help="openai: sqlite answer cache (default <labels-dir>/<input>.openai-cache.sqlite)")
    lab.add_argument("--hf-model-dir", help="hf: a local Hugging Face guard model directory")
    lab.add_argument("--guard-instruction", action="store_true",
                     help="openai/hf: wrap segments in a classification instruction (for non-guard chat models)")
    lab.add_argument("--fallback", default="Controversial", help="openai/hf: verdict for an unparseable answer")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tqdm import tqdm

    from megatron_reflect.data.labelers import build_labeler, describe_quality, labeler_quality
    from megatron_reflect.data.labels import label_file, labels_path_for
    from megatron_reflect.data.readers import DEFAULT_MAX_CHARS
    from megatron_reflect.data.segment import SegmenterConfig

    try:
        if not 0 <= args.shard_index < args.num_shards:
            raise ReflectError(f"--shard-index {args.shard_index} is not in [0, --num-shards {args.num_shards})")
        files = expand_inputs(args.input)[args.shard_index::args.num_shards]
        seg_cfg = SegmenterConfig(max_words=args.segment_words, max_chars_cjk=args.segment_cjk_chars)
        all_stats = []
        quality = None
        for path in files:
            options = labeler_options(args, path)
            if quality is None:
                quality = labeler_quality(args.labeler, options)
                print(describe_quality(quality), file=sys.stderr)
            labeler = build_labeler(args.labeler, **options)
            with tqdm(desc=path.name, unit=" docs", file=sys.stderr) as bar:
                stats = label_file(path, labels_path_for(path, args.labels_dir), labeler, seg_cfg,
                                   json_keys=tuple(args.json_keys), batch_size=args.batch_size,
                                   resume=not args.no_resume, id_key=args.id_key,
                                   max_chars=args.max_chars or DEFAULT_MAX_CHARS, strict=args.strict,
                                   part_segments=args.part_segments, progress=bar)
            stats["labeler_quality"] = quality
            all_stats.append(stats)
            summary = {k: stats.get(k) for k in ("output", "status", "documents", "segments", "segments_labelled_now",
                                                 "verdicts_labelled_now", "skipped", "skipped_by_reason",
                                                 "labeler_stats", "segments_per_s")}
            print(json.dumps({k: v for k, v in summary.items() if v is not None}))
        if args.stats:
            Path(args.stats).write_text(json.dumps(all_stats, indent=2), encoding="utf-8")
    except ReflectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
