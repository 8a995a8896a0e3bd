"""Train the embedded safety classifier, evaluate it by held-out domain, or distil a guard into it.

Three modes:

* default: retrain the shipped artifacts in megatron_reflect/data/artifacts/ (the default
  ``minilm`` family as safety_classifier.*, the fast ``hashed`` family as
  safety_classifier_hashed.*) on the packaged domain-diverse set, without the domain
  ``--hold-out-domain`` (reviews), and store each family's held-out-domain table in its
  JSON (with the inserted-sentence recall).  Deterministic.  ~5 minutes on a CPU once the
  MiniLM embeddings are cached (~20 minutes to embed the ~6k segments and their sentences
  the first time, single thread).
* ``--evaluate-only``: print the held-out-domain table (markdown and JSON) of ``--families``.
* ``--from-labels DIR --input FILES``: guard distillation.  Train an artifact on the segment
  labels that tools/label_corpus.py stored in DIR for FILES (e.g. Qwen3Guard behind vLLM on
  a 1 % sample of the corpus), holding out 20 % of the documents, and report the student's
  agreement with the teacher on them next to the packaged default's.  Then label the rest
  of the corpus on CPUs with ``--labeler classifier --labeler-options '{"artifact_dir": OUT}'``.

Examples:
  train_classifier.py
  train_classifier.py --evaluate-only --families minilm,hashed
  train_classifier.py --from-labels labels/ --input 'sample/*.jsonl' --out-dir my_classifier/
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

from megatron_reflect.errors import ReflectError


def expand(patterns: list[str]) -> list[str]:
    files: list[str] = []
    for pattern in patterns:
        hits = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        if not hits:
            raise ReflectError(f"--input {pattern!r} matches no file")
        files.extend(hits)
    return files


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from megatron_reflect.data.labelers.classifier import default_artifact_dir
    from megatron_reflect.data.labelers.features import FAMILIES
    from megatron_reflect.labeler_training.linear import SHIPPED_HELD_OUT_DOMAIN

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default=None,
                   help="where to write safety_classifier*.{npz,json} (default: the packaged artifact dir; "
                        "required with --from-labels)")
    p.add_argument("--families", default="minilm,hashed",
                   help=f"comma-separated families to train/evaluate, the first is the default ({', '.join(FAMILIES)})")
    p.add_argument("--hold-out-domain", default=SHIPPED_HELD_OUT_DOMAIN,
                   help="domain left out of the shipped artifacts' training ('none' to use all)")
    p.add_argument("--evaluate-only", action="store_true", help="print the held-out-domain tables, write nothing")
    p.add_argument("--no-evaluate", action="store_true", help="train without the held-out-domain tables (faster)")
    p.add_argument("--from-labels", metavar="DIR", help="distil: the --labels-dir of tools/label_corpus.py")
    p.add_argument("--input", nargs="+", help="with --from-labels: the corpus files those labels are of (globs ok)")
    p.add_argument("--family", default="minilm", help="with --from-labels: the student's family")
    p.add_argument("--held-out-percent", type=int, default=20, help="with --from-labels: documents held out")
    p.add_argument("--progress", action="store_true", help="show embedding progress")
    args = p.parse_args(argv)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    try:
        from megatron_reflect.labeler_training import linear as training

        if args.from_labels:
            if not args.input or not args.out_dir:
                raise ReflectError("--from-labels needs --input FILES and --out-dir DIR")
            meta = training.distill(expand(args.input), args.from_labels, args.out_dir, family=args.family,
                                    held_out_percent=args.held_out_percent)
            print(json.dumps({"out_dir": args.out_dir, "training": meta["training"],
                              "distillation": meta["distillation"]}, indent=2))
            return 0
        if args.evaluate_only:
            from megatron_reflect.labeler_training.corpus import load_domain_examples

            examples = load_domain_examples()
            results = [training.evaluate_held_out_domains(f, examples, progress=args.progress) for f in families]
            print(training.markdown_table(results))
            print(json.dumps([{"family": r["family"], **r["summary"]} for r in results], indent=2))
            return 0
        held = None if args.hold_out_domain.lower() == "none" else args.hold_out_domain
        metas = training.train_packaged(args.out_dir or default_artifact_dir(), families=families,
                                        default_family=families[0], held_out_domain=held,
                                        evaluate=not args.no_evaluate, progress=args.progress)
        results = [m["held_out_domains"] for m in metas.values() if "held_out_domains" in m]
        if results:
            print(training.markdown_table(results))
        print(json.dumps({f: {"thresholds": m["thresholds"], "shipped_held_out": m.get("shipped_held_out"),
                              "summary": m.get("held_out_domains", {}).get("summary")} for f, m in metas.items()},
                         indent=2))
    except ReflectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
