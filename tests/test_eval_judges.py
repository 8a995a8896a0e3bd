"""Judges checked against people, and the evaluation on a model that writes reflections.

Proves: Cohen's kappa of two judges that disagree equals a hand computation; the committed
hand-labelled set (66 real SmolLM2-135M-Instruct responses, RUBRIC.md) loads complete and
every judge's agreement with it is what counting item by item gives; on SmolLM2 after a
short reflection SFT, the reflection-aware and reflection-blind ASR differ exactly on the
samples the model flagged, and summary.json's ASR equals a count of samples.jsonl.
"""

from __future__ import annotations

import json

import pytest

from megatron_reflect.eval.judge_check import hand_label_agreement, load_hand_labels
from megatron_reflect.eval.judges import Judgement, Sample, agreement
from megatron_reflect.eval.judges.classifier import ClassifierJudge
from megatron_reflect.eval.judges.refusal import RefusalJudge


def test_kappa_of_disagreeing_judges_by_hand():
    a = [Judgement(v) for v in (True, True, True, False, False, False, True, None, False, True)]
    b = [Judgement(v) for v in (True, False, True, True, False, False, False, True, False, True)]
    # 9 decided pairs (the None is dropped): agree on 6 -> p_o = 6/9.
    # a says harmful 5/9, b 4/9: p_e = 5/9 * 4/9 + 4/9 * 5/9 = 40/81.
    # kappa = (6/9 - 40/81) / (1 - 40/81) = (54/81 - 40/81) / (41/81) = 14/41.
    got = agreement(a, b)
    assert got["n"] == 9 and got["agreement"] == pytest.approx(6 / 9) and got["kappa"] == pytest.approx(14 / 41)
    # judges that always disagree: p_o = 0, p_e = 1/2 (each says harmful half the time) -> kappa = -1
    assert agreement([Judgement(True), Judgement(False)], [Judgement(False), Judgement(True)])["kappa"] == -1.0
    assert agreement([Judgement(None)], [Judgement(True)]) == {"n": 0, "agreement": None, "kappa": None}


@pytest.fixture(scope="module")
def hand():
    return load_hand_labels()


def _count(pred: list[bool], ref: list[bool]) -> tuple[float, float]:
    n = len(ref)
    po = sum(p == r for p, r in zip(pred, ref)) / n
    pp, pr = sum(pred) / n, sum(ref) / n
    pe = pp * pr + (1 - pp) * (1 - pr)
    return po, (po - pe) / (1 - pe)


class Memo:
    """A judge that judges once (the classifier judge embeds with MiniLM: once is enough)."""

    def __init__(self, judge) -> None:
        self.judge_, self.out = judge, None

    def judge(self, samples):
        if self.out is None:
            self.out = self.judge_.judge(samples)
        return self.out


def test_judges_against_hand_labels(hand):
    assert len(hand) >= 60
    assert sum(i.kind == "harmful" for i in hand) >= 30 and sum(i.kind == "benign" for i in hand) >= 25
    assert not any(i.harmful for i in hand if i.kind == "benign")  # per the rubric, checked by reading
    judges = {"refusal rule": Memo(RefusalJudge()), "classifier": Memo(ClassifierJudge())}
    res = hand_label_agreement(hand, judges)
    harmful = [i for i in hand if i.kind == "harmful"]
    rule = [j.harmful for j, i in zip(judges["refusal rule"].out, hand) if i.kind == "harmful"]
    po, kappa = _count(rule, [i.harmful for i in harmful])
    assert res["refusal rule"]["harmful_prompts"]["agreement"] == pytest.approx(po)
    assert res["refusal rule"]["harmful_prompts"]["kappa"] == pytest.approx(kappa)
    refused = [not j.harmful for j in judges["refusal rule"].out]
    po_r, kappa_r = _count(refused, [i.refusal for i in hand])
    assert res["refusal rule"]["refusal_detection"]["agreement"] == pytest.approx(po_r)
    assert res["refusal rule"]["refusal_detection"]["kappa"] == pytest.approx(kappa_r)
    clf = [j.harmful for j in judges["classifier"].out]
    po_c, kappa_c = _count(clf, [i.harmful for i in hand])
    assert res["classifier"]["all_prompts"]["agreement"] == pytest.approx(po_c)
    assert res["classifier"]["all_prompts"]["kappa"] == pytest.approx(kappa_c)
    harmful_clf = [clf[k] for k, i in enumerate(hand) if i.kind == "harmful"]
    po_h, kappa_h = _count(harmful_clf, [i.harmful for i in harmful])
    assert res["classifier"]["harmful_prompts"]["kappa"] == pytest.approx(kappa_h)
    # What the measurement showed (README): SmolLM2-135M never writes a refusal phrase (its 5
    # refusals are deflections), so the refusal rule calls every answer an attack success: kappa 0
    # with the hand labels; the classifier judge, which reads the answer, does better.
    assert not any(refused) and kappa == 0.0
    assert kappa_h > kappa + 0.15 and res["classifier"]["all_prompts"]["kappa"] > 0.3


# ---------------------------------------------------------------- a model that writes reflections

def test_evaluation_counts_on_a_reflecting_model(reflecting_sft, tmp_path):
    from megatron_reflect.eval.pipeline import EvalConfig, run_evaluation

    model, tok, _, _ = reflecting_sft
    cfg = EvalConfig(out_dir=str(tmp_path), n_prompts=8, seed=3, generation={"max_new_tokens": 16, "batch_size": 8},
                     judges=["refusal"], evaluations=[{"type": "direct"}])
    summary = run_evaluation(cfg, model=model, tokenizer=tok)
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    direct = [s for s in samples if s["attack"] == "direct"]
    assert len(direct) == 8
    row = next(r for r in json.loads((tmp_path / "summary.json").read_text())["attacks"] if r["attack"] == "direct")
    assert row == next(r for r in summary["attacks"] if r["attack"] == "direct")
    assert row["n"] == 8
    assert row["asr_blind"] == sum(s["success_blind"] for s in direct) / 8
    assert row["asr_aware"] == sum(s["success_aware"] for s in direct) / 8
    flagged = [s for s in direct if s["refused_by_reflection"]]
    assert flagged, [s["generated"] for s in direct]
    blind = RefusalJudge(reflection_aware=False)
    for s in direct:
        phrase_refusal = blind.refused(Sample(s["goal"], s["visible"]))
        assert s["success_blind"] == (not phrase_refusal)
        # the two countings differ exactly where the model flagged and wrote no refusal phrase
        assert s["success_aware"] == (s["success_blind"] and not s["refused_by_reflection"])
        if s["refused_by_reflection"]:
            assert s["reflections"] and s["reflections"][-1][0] in ("Unsafe", "Controversial")
    differ = sum(s["success_blind"] != s["success_aware"] for s in direct)
    assert differ == sum(s["refused_by_reflection"] and s["success_blind"] for s in direct) >= 1
    assert row["asr_blind"] - row["asr_aware"] == pytest.approx(differ / 8)
