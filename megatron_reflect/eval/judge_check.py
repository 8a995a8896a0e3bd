"""How far to trust a judge: its agreement with hand labels of real model responses.

The set (``tests/data/judge_hand_labels``): 66 responses of the packaged SmolLM2-135M-Instruct
(greedy, 96 new tokens) to 36 harmful and 30 benign prompts, each read and labelled by a
person following RUBRIC.md there: ``harmful`` (the response materially serves a harmful
request: attack success) and ``refusal`` (it declines or deflects).  ``hand_label_agreement``
runs judges on the (prompt, response) pairs and reports raw agreement and Cohen's kappa:

* every judge's ``harmful`` against the hand ``harmful`` label, on the harmful prompts (what
  the evaluation judges: attack records) and on all 66;
* the refusal rule's refusal detection against the hand ``refusal`` label (all 66).

Run ``python -m megatron_reflect.eval.judge_check [--llm-url URL]`` for the table.  Cost: the
judges' cost on 66 short texts (the classifier judge: ~10 s on CPU with MiniLM).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from megatron_reflect.errors import DataError
from megatron_reflect.eval.judges import Judgement, Sample, agreement

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "tests" / "data" / "judge_hand_labels"


@dataclass(frozen=True)
class HandLabelled:
    id: str
    kind: str  # "harmful" or "benign" prompt
    prompt: str
    response: str
    harmful: bool
    refusal: bool
    note: str = ""

    def sample(self) -> Sample:
        return Sample(self.prompt, self.response)


def load_hand_labels(root: str | Path = DEFAULT_DIR) -> list[HandLabelled]:
    """responses.jsonl joined with labels.jsonl by id; every response must have a label."""
    root = Path(root)
    responses = _jsonl(root / "responses.jsonl")
    labels = {r["id"]: r for r in _jsonl(root / "labels.jsonl")}
    out = []
    for r in responses:
        lab = labels.get(r["id"])
        if lab is None:
            raise DataError(f"{root / 'labels.jsonl'}: no hand label for response {r['id']!r}")
        if not isinstance(lab.get("harmful"), bool) or not isinstance(lab.get("refusal"), bool):
            raise DataError(f"{root / 'labels.jsonl'}: {r['id']}: 'harmful' and 'refusal' must be true/false")
        out.append(HandLabelled(r["id"], r["kind"], r["prompt"], r["response"], lab["harmful"], lab["refusal"],
                                lab.get("note", "")))
    extra = set(labels) - {r["id"] for r in responses}
    if extra:
        raise DataError(f"{root / 'labels.jsonl'}: labels for unknown responses {sorted(extra)[:5]}")
    return out


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"{path}: missing")
    out = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line_no}: invalid JSON ({e.msg})") from e
    return out


def hand_label_agreement(items: list[HandLabelled], judges: dict[str, object]) -> dict[str, dict]:
    """Per judge: agreement/kappa of its verdict with the hand labels (see module docstring)."""
    hand = [Judgement(i.harmful) for i in items]
    harmful_rows = [k for k, i in enumerate(items) if i.kind == "harmful"]
    out: dict[str, dict] = {}
    for name, judge in judges.items():
        got = judge.judge([i.sample() for i in items])  # type: ignore[attr-defined]
        row = {"harmful_prompts": agreement([got[k] for k in harmful_rows], [hand[k] for k in harmful_rows]),
               "all_prompts": agreement(got, hand),
               "undecided": sum(j.harmful is None for j in got)}
        if name.startswith("refusal"):
            refused = [Judgement(not j.harmful) for j in got]
            row["refusal_detection"] = agreement(refused, [Judgement(i.refusal) for i in items])
        out[name] = row
    return out


def markdown(results: dict[str, dict], items: list[HandLabelled]) -> str:
    n_h = sum(i.kind == "harmful" for i in items)
    lines = [f"| judge | harmful prompts (n={n_h}): agreement / kappa | all {len(items)}: agreement / kappa | "
             "refusal detection: agreement / kappa |", "|---|---|---|---|"]

    def cell(a: dict | None) -> str:
        if not a or a.get("agreement") is None:
            return "-"
        return f"{a['agreement']:.3f} / {a['kappa']:.3f} (n={a['n']})"

    for name, r in results.items():
        lines.append(f"| {name} | {cell(r['harmful_prompts'])} | {cell(r['all_prompts'])} | "
                     f"{cell(r.get('refusal_detection'))} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default=str(DEFAULT_DIR), help="the hand-labelled set")
    p.add_argument("--llm-url", help="also judge with the LLM judge at this OpenAI-compatible base URL (…/v1)")
    p.add_argument("--llm-model", default="judge")
    p.add_argument("--classifier-model", default=None,
                   help="classifier family: minilm (the judge's, default), hashed, or default (the fine-tuned labeler)")
    args = p.parse_args(argv)
    from megatron_reflect.eval.judges.classifier import ClassifierJudge
    from megatron_reflect.eval.judges.refusal import RefusalJudge

    items = load_hand_labels(args.dir)
    judges: dict[str, object] = {"refusal rule": RefusalJudge(),
                                 "classifier": ClassifierJudge(**({"model": args.classifier_model}
                                                                  if args.classifier_model else {}))}
    if args.llm_url:
        from megatron_reflect.eval.judges.llm import LLMJudge, LLMJudgeConfig

        judges["llm"] = LLMJudge(LLMJudgeConfig(base_url=args.llm_url, model=args.llm_model))
    res = hand_label_agreement(items, judges)
    print(markdown(res, items))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
