#!/usr/bin/env python
"""Chat records in, reflection SFT data out (the input of tools/sft.py --data).

  # oracle route: the records carry a harm label (boolean or verdict) on the record or message
  python tools/prepare_sft.py --input chats.jsonl.zst --output sft.jsonl --label-field harmful
  # any labeler of the pipeline (classifier, openai, hf, oracle)
  python tools/prepare_sft.py --input tulu3.parquet --output sft.jsonl --labeler classifier
  # stored labels (label_corpus contract): export the turns, label them at scale, read them back
  python tools/prepare_sft.py --input tulu3.parquet --export-turns turns.jsonl
  python tools/label_corpus.py --input turns.jsonl --labels-dir labels/ --labeler hf ...
  python tools/prepare_sft.py --input tulu3.parquet --output sft.jsonl --labels labels/turns.jsonl.labels.parquet

Input: JSONL or Parquet (plain, .gz, .zst) with ``messages: [{role, content}]`` (Tulu-3 /
OpenAI; system turns, several user turns) or ``prompt``/``response`` pairs.  Each assistant
turn opens with a reflection on the request it answers; Safe answers carry a reflection
after every segment (--reflect-every words, the pretraining segmenter); an Unsafe request
gets the Unsafe reflection and the end of the turn (--refusal-policy keep: a refusal that
the data gives stays after it); --recovery-rate adds "a few words, then Unsafe, stop".
Bad records are skipped and listed (file:line) in <output>.stats.json, or raise with
--strict.  Output and stats are written atomically; a killed run resumes (--no-resume
starts over).  The stats count answers that open with a refusal after a request the labels
do not call Unsafe (refused_not_unsafe), with a warning: the sign of a label source that
misses harmful requests (the default classifier found 18% of a medical-misuse set).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from megatron_reflect.errors import ReflectError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    from megatron_reflect.posttrain.prepare import REFUSAL_POLICIES, PrepareConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="chat file (.jsonl[.gz|.zst] or .parquet)")
    p.add_argument("--output", help="reflection SFT JSONL (stats in <output>.stats.json)")
    p.add_argument("--export-turns", metavar="JSONL", help="write every turn as {id, text} for tools/label_corpus.py")
    src = p.add_argument_group("labels (exactly one)")
    src.add_argument("--label-field", help="a boolean / verdict field of the record (its user turns) or message")
    src.add_argument("--labeler", help="a labeler of the pipeline: oracle, classifier, openai, hf")
    src.add_argument("--labeler-options", default="{}", help="JSON object of the labeler's options")
    src.add_argument("--labels", help="stored label file of the exported turns (label_corpus output)")
    p.add_argument("--reflect-every", type=int, default=PrepareConfig.reflect_every_words,
                   help="segment budget in words (the pretraining segmenter)")
    p.add_argument("--refusal-policy", choices=REFUSAL_POLICIES, default=PrepareConfig.refusal_policy)
    p.add_argument("--recovery-rate", type=float, default=0.0, help="share of Unsafe turns that start answering")
    p.add_argument("--recovery-words", type=int, default=PrepareConfig.recovery_words)
    p.add_argument("--template-from", help="a model directory whose reflection_format.json to use")
    p.add_argument("--id-key", default="id")
    p.add_argument("--strict", action="store_true", help="a bad record is an error, not a skip")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    from megatron_reflect.posttrain.prepare import PrepareConfig, export_turns, prepare_file

    try:
        if a.export_turns:
            print(json.dumps(export_turns(a.input, a.export_turns, a.id_key), indent=1))
            if not a.output:
                return 0
        if not a.output:
            raise ReflectError("--output is required (or --export-turns alone)")
        try:
            options = json.loads(a.labeler_options)
        except json.JSONDecodeError as e:
            raise ReflectError(f"--labeler-options must be a JSON object: {e}") from None
        cfg = PrepareConfig(reflect_every_words=a.reflect_every, refusal_policy=a.refusal_policy,
                            recovery_rate=a.recovery_rate, recovery_words=a.recovery_words,
                            label_field=a.label_field, labeler=a.labeler, labeler_options=options,
                            labels_path=a.labels, id_key=a.id_key, strict=a.strict, seed=a.seed)
        template = None
        if a.template_from:
            from megatron_reflect.eval.models import load_template

            template = load_template(a.template_from)
        kwargs = {"template": template} if template is not None else {}
        stats = prepare_file(a.input, a.output, cfg, resume=not a.no_resume, **kwargs)
    except ReflectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in stats.items() if k != "skipped_records"}, indent=1))
    if stats["refused_not_unsafe"]:
        print(f"warning: {stats['refused_not_unsafe']} answers in {a.input} open with a refusal after a request that "
              "the labels do not call Unsafe; they are trained as Safe answers. A label source that misses harmful "
              "requests teaches refusals without Unsafe reflections (docs/POSTTRAINING.md, the --labeler run).",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
