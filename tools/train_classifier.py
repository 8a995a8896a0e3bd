"""Retrain the embedded safety classifier (megatron_reflect/data/artifacts/safety_classifier.*).

Deterministic: same packaged data, same hash split, same result.  Prints the held-out
metrics that are stored in the JSON beside the weights.  Takes ~1 minute on a CPU.
"""

from __future__ import annotations

import argparse
import json
import sys

from megatron_reflect.data.labelers.classifier import default_artifact_dir
from megatron_reflect.data.labelers.training import REGULARISATION_C, train_classifier
from megatron_reflect.errors import ReflectError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default=str(default_artifact_dir()),
                        help="where to write safety_classifier.{npz,json} (default: the packaged artifact dir)")
    parser.add_argument("--C", type=float, default=REGULARISATION_C, dest="c",
                        help="inverse L2 regularisation strength of both logistic regressions")
    args = parser.parse_args(argv)
    try:
        meta = train_classifier(args.out_dir, c=args.c)
    except ReflectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"out_dir": args.out_dir, "held_out": meta["held_out"], "training": meta["training"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
