"""GPU-only checks (skipped without CUDA): Transformer Engine layers, bf16 and FP8 steps.

The same model code runs on CPU in the rest of the suite; here the TE layer spec and FP8
(tensorwise current scaling, as on H100) must give a sane loss that trains.  The longer
throughput / MFU / export checks are in tools/gpu_check.sh.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from megatron_reflect.model import PrecisionConfig, build_gpt_model, get_preset
from megatron_reflect.runtime import ParallelConfig
from megatron_reflect.runtime.launch import run_distributed

pytestmark = pytest.mark.gpu


def _losses(fp8: str, steps: int) -> list[float]:
    from megatron_reflect.runtime import init_runtime

    init_runtime(ParallelConfig(), seed=3)
    # FP8 GEMMs need dimensions divisible by 16
    cfg = dataclasses.replace(get_preset("tiny"), hidden_size=128, ffn_hidden_size=384, num_attention_heads=4,
                              num_query_groups=2, vocab_size=512, layer_spec="te")
    model = build_gpt_model(cfg, ParallelConfig(), PrecisionConfig(dtype="bf16", fp8=fp8))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    text = torch.randint(0, 64, (4, 129), generator=g).cuda()  # a small alphabet: learnable quickly
    tokens, labels = text[:, :-1], text[:, 1:]
    pos = torch.arange(128, device="cuda").expand(4, 128)
    out = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = model(tokens, pos, None, labels=labels).float().mean()
        loss.backward()
        opt.step()
        out.append(float(loss))
    return out


@pytest.mark.parametrize("fp8", ["none", "tensorwise"])
def test_te_layers_train_in_bf16_and_fp8(fp8: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("transformer_engine.pytorch")
    [losses] = run_distributed(_losses, 1, fp8, 20)
    padded = get_preset("tiny").make_vocab_size_divisible_by * math.ceil(512 / 128)
    assert losses[0] == pytest.approx(math.log(padded), abs=0.3)
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 1.0, losses
