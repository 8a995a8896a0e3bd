"""Write a MedSafetyWorld: its facts (world.json) and its corpus (corpus.jsonl).

Each corpus record carries oracle span labels and exact rewrites, so the data pipeline can
read it directly, e.g.::

    python tools/make_world.py --out data/msw --seed 0
    python tools/preprocess_data.py --input data/msw/corpus.jsonl --output-prefix data/msw/reflect \\
        --labeler oracle --mode reflect --tokenizer-type sentencepiece --tokenizer-model ...

Any WorldConfig field can be overridden: ``--set p_alt=0.35 --set num_notes=2000 --set hazard_form=b``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory (world.json, corpus.jsonl)")
    parser.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    parser.add_argument("--quick", action="store_true", help="the small test-size world")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a WorldConfig field (repeatable)")
    args = parser.parse_args(argv)

    from megatron_reflect.config import merge, parse_overrides
    from megatron_reflect.errors import ReflectError
    from megatron_reflect.world.config import WorldConfig, quick_config
    from megatron_reflect.world.documents import build_corpus, write_jsonl
    from megatron_reflect.world.generator import generate_world

    try:
        cfg = quick_config(args.seed) if args.quick else WorldConfig(seed=args.seed)
        cfg = merge(cfg, parse_overrides(args.set))
        world = generate_world(cfg)
    except ReflectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    records = build_corpus(world)
    write_jsonl(out / "corpus.jsonl", records)
    (out / "world.json").write_text(world.to_json())
    from collections import Counter

    kinds = Counter(r["note_kind"] or r["kind"] for r in records)
    print(json.dumps({"world_version": world.version, "drugs": world.drug_names,
                      "conditions": list(world.conditions), "records": len(records),
                      "unsafe": sum(r["unsafe"] for r in records), "kinds": dict(sorted(kinds.items())),
                      "trap_pairs": world.trap_pairs, "shown_trap_risks": list(world.shown_trap_risks),
                      "out": str(out)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
