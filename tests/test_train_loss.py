"""The reflection-aware loss (train/step.reflection_loss) against a hand computation.

A hand-built batch of 8 positions covers every metadata code: text, a masked text token,
Safe / Unsafe / Controversial reflection tokens with and without the verdict flag.  The
per-token cross entropy comes from megatron's vocab-parallel cross entropy, the function
GPTModel applies to its logits when given labels; the expected figures are computed here
with ``math`` from the raw logits.  The loss is checked at reflection_loss_weight 1.0, 0.5
and 0.0, with its gradient, and at TP=2 (vocabulary split over two ranks) where the same
numbers must come out.
"""

from __future__ import annotations

import math

import pytest
import torch

from megatron_reflect.runtime import ParallelConfig
from megatron_reflect.runtime.launch import run_distributed

V = 8
# (label, loss_mask, meta code); codes: 0 text, 1/2/3 Safe/Unsafe/Controversial reflection, +0x10 verdict word
POSITIONS = [
    (3, 1.0, 0x00),  # text
    (5, 0.0, 0x00),  # text, masked out of the loss (e.g. EOD with eod_mask_loss)
    (1, 1.0, 0x01),  # "<think>" of a Safe reflection
    (2, 1.0, 0x11),  # verdict word "Safe": label 2 gets more than half the probability -> correct
    (6, 1.0, 0x12),  # verdict word "Unsafe": label 6 gets little probability -> wrong
    (4, 1.0, 0x02),  # rest of the Unsafe reflection
    (7, 1.0, 0x13),  # verdict word "Controversial": label 7 is the argmax -> correct
    (0, 1.0, 0x00),  # text
    (5, 1.0, 0x11),  # verdict word "Safe": label 5 is the argmax but gets under half the probability -> wrong
]


def _logits() -> list[list[float]]:
    g = torch.Generator().manual_seed(11)
    rows = torch.randn(len(POSITIONS), V, generator=g)
    rows[3, 2] = 5.0   # Safe verdict: p(label) > 1/2
    rows[4, 1] = 5.0   # Unsafe verdict: the mass is on 1, not on the label 6
    rows[6, 7] = 5.0   # Controversial verdict: p(label) > 1/2
    rows[8] = 0.0
    rows[8, 5] = 1.0   # Safe verdict whose label is the argmax, yet p(label) = e / (e + 7) < 1/2
    return rows.tolist()


def _hand(weight: float) -> dict[str, float]:
    """Every reported figure, from the definition, in plain Python."""
    logits = _logits()
    ce = [math.log(sum(math.exp(x) for x in row)) - row[label] for row, (label, _, _) in zip(logits, POSITIONS)]
    text = [c for c, (_, m, code) in zip(ce, POSITIONS) if m and code & 3 == 0]
    refl = [c for c, (_, m, code) in zip(ce, POSITIONS) if m and code & 3 != 0]
    n_tokens = len(text) + (len(refl) if weight > 0 else 0)
    return {"loss_sum": sum(text) + weight * sum(refl), "num_tokens": n_tokens,
            "text_loss": sum(text) / len(text), "reflection_loss": sum(refl) / len(refl)}


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    labels = torch.tensor([[p[0] for p in POSITIONS]])
    mask = torch.tensor([[p[1] for p in POSITIONS]])
    meta = torch.tensor([[p[2] for p in POSITIONS]], dtype=torch.uint8)
    logits = torch.tensor(_logits()).unsqueeze(0)
    return labels, mask, meta, logits


def _compute(weight: float, tp: int) -> dict:
    from megatron.core import parallel_state, tensor_parallel

    from megatron_reflect.runtime import init_runtime
    from megatron_reflect.train.step import LossConfig, reflection_loss

    init_runtime(ParallelConfig(tensor_model_parallel_size=tp))
    labels, mask, meta, logits = _batch()
    rank = parallel_state.get_tensor_model_parallel_rank()
    shard = logits.chunk(tp, dim=-1)[rank].clone().requires_grad_(True)
    per_token = tensor_parallel.vocab_parallel_cross_entropy(shard, labels)
    loss_sum, num_tokens, report = reflection_loss(LossConfig(reflection_loss_weight=weight), per_token, mask, meta)
    loss_sum.backward()
    return {"loss_sum": float(loss_sum), "num_tokens": int(num_tokens), "grad": shard.grad[0].clone(),
            "report": {k: v.tolist() for k, v in report.items()}}


def _all_cases() -> list[tuple[float, int, dict]]:
    return [(w, 1, _compute(w, 1)) for w in (1.0, 0.5, 0.0)]


@pytest.fixture(scope="module")
def cases() -> list[tuple[float, int, dict]]:
    [out] = run_distributed(_all_cases, 1)
    return out


@pytest.mark.parametrize("index", [0, 1, 2], ids=["weight1.0", "weight0.5", "weight0.0"])
def test_loss_matches_hand_computation(cases, index: int) -> None:
    weight, _, got = cases[index]
    want = _hand(weight)
    assert got["loss_sum"] == pytest.approx(want["loss_sum"], abs=1e-5)
    assert got["num_tokens"] == want["num_tokens"]  # 8 scored tokens at w > 0, the 2 text tokens at w = 0
    r = got["report"]
    assert r["loss"] == pytest.approx([want["loss_sum"], want["num_tokens"]], abs=1e-5)
    # text and reflection losses are unweighted means, whatever the weight
    assert r["text_loss"][0] / r["text_loss"][1] == pytest.approx(want["text_loss"], abs=1e-6)
    assert r["text_loss"][1] == 2  # positions 0 and 7; position 1 is masked
    assert r["reflection_loss"][0] / r["reflection_loss"][1] == pytest.approx(want["reflection_loss"], abs=1e-6)
    assert r["reflection_loss"][1] == 6
    # verdict accuracy: Safe 1/2, Unsafe 0/1, Controversial 1/1
    assert r["verdict_acc_safe"] == [1.0, 2.0]
    assert r["verdict_acc_unsafe"] == [0.0, 1.0]
    assert r["verdict_acc_controversial"] == [1.0, 1.0]


def test_gradient_weights_reflection_tokens(cases) -> None:
    """d loss_sum / d logits = weight x (softmax - onehot) at every scored position; 0 where masked."""
    logits = torch.tensor(_logits(), dtype=torch.float64)
    probs = logits.softmax(-1)
    for weight, _, got in cases:
        for i, (label, m, code) in enumerate(POSITIONS):
            w = 0.0 if not m else (weight if code & 3 else 1.0)
            expected = w * (probs[i] - torch.nn.functional.one_hot(torch.tensor(label), V).double())
            assert torch.allclose(got["grad"][i].double(), expected, atol=1e-6), (weight, i)


def _tp2(weight: float) -> dict:
    return _compute(weight, 2)


def test_tensor_parallel_vocab_split_gives_the_same_report(cases) -> None:
    """Logits split over the vocabulary on 2 ranks: same loss, counts and verdict accuracy."""
    weight, _, single = cases[1]
    ranks = run_distributed(_tp2, 2, weight)
    for got in ranks:
        assert got["loss_sum"] == pytest.approx(single["loss_sum"], abs=1e-5)
        assert got["num_tokens"] == single["num_tokens"]
        for key, pair in single["report"].items():
            assert got["report"][key] == pytest.approx(pair, abs=1e-5), key
    # each rank holds the gradient of its half of the vocabulary
    assert torch.allclose(torch.cat([ranks[0]["grad"], ranks[1]["grad"]], dim=-1), single["grad"], atol=1e-6)
