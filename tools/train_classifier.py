"""Train the embedded safety labeler, measure it on the held-out user-like test, or distil a guard into it.

Modes:

* default: fine-tune the default labeler (MiniLM's layers + a head, end to end) on the
  packaged domains plus the framed requests and depictions, calibrate its thresholds on a
  split of them, run the held-out user-like test, and write
  megatron_reflect/data/artifacts/safety_classifier.{npz,json} (or --out-dir).
  ~30-60 minutes on 2 CPU cores.  Deterministic for a fixed seed and thread count.
* ``--linear hashed[,minilm]``: retrain linear heads (``hashed``: the fast family;
  ``minilm``: the previous default, a head on frozen MiniLM embeddings) with their
  held-out-domain tables, as safety_classifier_<family>.*.
* ``--user-test [--models default,minilm,hashed]``: print the held-out user-like test
  (labeler_training/user_test.py) of shipped artifacts side by side.  Writes nothing.
* ``--evaluate-only --families minilm,hashed``: the linear families' held-out-domain table.
* ``--from-labels DIR --input FILES --out-dir OUT``: guard distillation.  Fine-tune the
  encoder on the segment labels that tools/label_corpus.py stored in DIR for FILES (e.g.
  Qwen3Guard behind vLLM on a 1 % sample of the corpus), holding out 20 % of the documents,
  and report the student's agreement with the teacher on them next to the packaged
  default's.  Then label the rest of the corpus on CPUs with
  ``--labeler classifier --labeler-options '{"artifact_dir": OUT}'``.

Examples:
  train_classifier.py --progress
  train_classifier.py --user-test --models default,minilm,hashed
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


DOMAIN_LABELS = {
    "harmful_framed": "harmful requests in web frames, flagged (recall; goal >= 80%)",
    "harmful_bare": "the same requests bare, flagged (recall)",
    "benign_framed": "benign requests in the same frames, flagged (goal <= 10%)",
    "benign_bare": "the same benign requests bare, flagged",
}


def user_test_table(results: dict[str, dict]) -> str:
    """Markdown: one column per labeler; a row per test domain, then the pooled literature and AUROC."""
    names = list(results)
    first = results[names[0]]
    lines = ["| user-like test (segments) | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for d in [*DOMAIN_LABELS, *sorted(k for k in first["domains"] if k.startswith("literature:"))]:
        label = f"{d} ({first['domains'][d]['segments']})" + (f": {DOMAIN_LABELS[d]}" if d in DOMAIN_LABELS else "")
        lines.append(f"| {label} | " + " | ".join(f"{100 * results[n]['domains'][d]['flagged']:.1f}%" for n in names)
                     + " |")
    lines.append("| literature, all files, flagged (goal <= 3%) | "
                 + " | ".join(f"{100 * results[n]['literature_flagged']:.1f}%" for n in names) + " |")
    lines.append("| AUROC (framed harmful vs literature + framed benign; goal >= 0.95) | "
                 + " | ".join(f"{results[n]['auroc']:.3f}" for n in names) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from megatron_reflect.data.labelers.classifier import default_artifact_dir
    from megatron_reflect.labeler_training.linear import SHIPPED_HELD_OUT_DOMAIN

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default=None,
                   help="where to write safety_classifier*.{npz,json} (default: the packaged artifact dir; "
                        "required with --from-labels)")
    p.add_argument("--linear", metavar="FAMILIES", help="retrain linear heads instead: hashed and/or minilm")
    p.add_argument("--hold-out-domain", default=SHIPPED_HELD_OUT_DOMAIN,
                   help="domain left out of training ('none' to use all)")
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch threads for fine-tuning")
    p.add_argument("--user-test", action="store_true", help="print the held-out user-like test of --models")
    p.add_argument("--models", default="default,minilm,hashed", help="with --user-test: artifacts to compare")
    p.add_argument("--evaluate-only", action="store_true", help="print the linear families' held-out-domain table")
    p.add_argument("--families", default="minilm,hashed", help="with --evaluate-only: linear families")
    p.add_argument("--from-labels", metavar="DIR", help="distil: the --labels-dir of tools/label_corpus.py")
    p.add_argument("--input", nargs="+", help="with --from-labels: the corpus files those labels are of (globs ok)")
    p.add_argument("--held-out-percent", type=int, default=20, help="with --from-labels: documents held out")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    args = p.parse_args(argv)
    held = None if args.hold_out_domain.lower() == "none" else args.hold_out_domain
    try:
        from megatron_reflect.labeler_training import finetune, linear

        cfg = finetune.FinetuneConfig(**{k: v for k, v in (("epochs", args.epochs), ("threads", args.threads))
                                         if v is not None})
        if args.from_labels:
            if not args.input or not args.out_dir:
                raise ReflectError("--from-labels needs --input FILES and --out-dir DIR")
            meta = finetune.distill(expand(args.input), args.from_labels, args.out_dir,
                                    held_out_percent=args.held_out_percent,
                                    cfg=cfg if args.epochs else None)
            print(json.dumps({"out_dir": args.out_dir, "training": meta["training"],
                              "distillation": meta["distillation"]}, indent=2))
            return 0
        if args.user_test:
            from megatron_reflect.data.labelers.classifier import ClassifierLabeler
            from megatron_reflect.labeler_training import user_test

            test = user_test.items()
            results = {m: user_test.run(ClassifierLabeler(args.out_dir, model=None if m == "default" else m), test)
                       for m in args.models.split(",")}
            print(user_test_table(results))
            print(json.dumps(results, indent=1))
            return 0
        if args.evaluate_only:
            from megatron_reflect.labeler_training.corpus import load_domain_examples

            examples = load_domain_examples()
            families = [f.strip() for f in args.families.split(",") if f.strip()]
            results = [linear.evaluate_held_out_domains(f, examples, progress=args.progress) for f in families]
            print(linear.markdown_table(results))
            print(json.dumps([{"family": r["family"], **r["summary"]} for r in results], indent=2))
            return 0
        out_dir = args.out_dir or default_artifact_dir()
        if args.linear:
            families = [f.strip() for f in args.linear.split(",") if f.strip()]
            metas = linear.train_packaged(out_dir, families=families, held_out_domain=held, progress=args.progress)
            print(linear.markdown_table([m["held_out_domains"] for m in metas.values()]))
            return 0
        meta = finetune.train_default(out_dir, cfg, progress=args.progress, held_out_domain=held)
        print(json.dumps({k: meta.get(k) for k in ("thresholds", "shipped_held_out", "artifact_bytes", "user_test")},
                         indent=1))
    except ReflectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
