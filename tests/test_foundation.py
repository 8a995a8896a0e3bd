"""Foundation: a Llama-style GPTModel on CPU, its loss, and TP / PP over gloo.

Every parallel layout is built from one reference state dict (TP=1, PP=1) so the
comparisons are exact up to float reduction order.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from megatron_reflect.model import get_preset
from megatron_reflect.model.presets import ModelConfig
from megatron_reflect.runtime import ParallelConfig
from megatron_reflect.runtime.launch import run_distributed

SEQ, MBS, MICRO = 32, 2, 2


def _batches(vocab: int, n: int, seed: int = 7) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        text = torch.randint(0, vocab, (MBS, SEQ + 1), generator=g)
        out.append({
            "tokens": text[:, :-1].contiguous(),
            "labels": text[:, 1:].contiguous(),
            "loss_mask": torch.ones(MBS, SEQ),
            "position_ids": torch.arange(SEQ).expand(MBS, SEQ).contiguous(),
            "reflection_meta": torch.zeros(MBS, SEQ, dtype=torch.uint8),
        })
    return out


def _reference_state(model_cfg: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    from megatron_reflect.model import build_gpt_model
    from megatron_reflect.model.state import gather_full_state_dict
    from megatron_reflect.runtime import init_runtime

    init_runtime(ParallelConfig(), seed=seed)
    return gather_full_state_dict(build_gpt_model(model_cfg, ParallelConfig()))


def _train(model_cfg: ModelConfig, parallel: ParallelConfig, state: dict, batches: list, steps: int,
           lr: float) -> list[float] | None:
    """Run ``steps`` optimizer steps through megatron's schedule; losses on the last stage."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_reflect.model import build_gpt_model
    from megatron_reflect.model.state import load_full_state_dict
    from megatron_reflect.runtime import init_runtime
    from megatron_reflect.train.grads import allreduce_grads_cpu
    from megatron_reflect.train.step import LossConfig, make_forward_step

    rt = init_runtime(parallel, seed=1)
    model = build_gpt_model(model_cfg, parallel)
    load_full_state_dict(model, state)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    step_fn = make_forward_step(LossConfig(), rt.device)
    fwd_bwd = get_forward_backward_func()
    losses = []
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        micro = batches[step * MICRO:(step + 1) * MICRO]
        reports = fwd_bwd(forward_step_func=step_fn, data_iterator=iter(micro), model=[model],
                          num_microbatches=MICRO, seq_length=SEQ, micro_batch_size=MBS, forward_only=False)
        allreduce_grads_cpu([model])
        opt.step()
        if parallel_state.is_pipeline_last_stage():
            total = torch.stack([r["loss"] for r in reports]).sum(0)
            losses.append(float(total[0] / total[1]))
    return losses if parallel_state.is_pipeline_last_stage() else None


def _state_and_run(model_cfg, parallel, batches, steps, lr, seed=3):
    """Reference weights from a TP1/PP1 process, then the run in ``parallel``'s layout."""
    [state] = run_distributed(_reference_state, 1, model_cfg, seed)
    world = parallel.tensor_model_parallel_size * parallel.pipeline_model_parallel_size
    results = run_distributed(_train, world, model_cfg, parallel, state, batches, steps, lr)
    return [r for r in results if r is not None][0]


def _loss_vs_cross_entropy(model_cfg: ModelConfig) -> float:
    from megatron_reflect.model import build_gpt_model
    from megatron_reflect.runtime import init_runtime

    init_runtime(ParallelConfig(), seed=5)
    model = build_gpt_model(model_cfg, ParallelConfig())
    b = _batches(model_cfg.vocab_size, 1)[0]
    per_token = model(b["tokens"], b["position_ids"], None, labels=b["labels"])
    logits = model(b["tokens"], b["position_ids"], None)
    ref = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(), b["labels"].reshape(-1), reduction="none")
    assert per_token.shape == b["labels"].shape
    return float((per_token.double().reshape(-1) - ref).abs().max())


@pytest.mark.parametrize("preset", ["tiny", "tiny-untied"])
def test_per_token_loss_equals_torch_cross_entropy(preset: str) -> None:
    [diff] = run_distributed(_loss_vs_cross_entropy, 1, get_preset(preset))
    assert diff < 1e-6


def _tp_pp_case(preset: str, tp: int, pp: int) -> tuple[list[float], list[float]]:
    cfg = get_preset(preset)
    batches = _batches(cfg.vocab_size, 2 * MICRO)
    base = _state_and_run(cfg, ParallelConfig(), batches, steps=2, lr=0.5)
    other = _state_and_run(cfg, ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp),
                           batches, steps=2, lr=0.5)
    return base, other


@pytest.mark.parametrize("preset", ["tiny", "tiny-untied"])
def test_tensor_parallel_2_matches_1(preset: str) -> None:
    base, tp2 = _tp_pp_case(preset, tp=2, pp=1)
    assert len(base) == len(tp2) == 2
    # the first loss is before any update, the second after one SGD step
    for a, b in zip(base, tp2):
        assert abs(a - b) < 1e-6, (base, tp2)


@pytest.mark.parametrize("preset", ["tiny", "tiny-untied"])
def test_pipeline_parallel_2_matches_1(preset: str) -> None:
    base, pp2 = _tp_pp_case(preset, tp=1, pp=2)
    for a, b in zip(base, pp2):
        assert abs(a - b) < 1e-5, (base, pp2)


def test_optimizer_steps_lower_the_loss() -> None:
    cfg = dataclasses.replace(get_preset("tiny"), vocab_size=64)
    # the same two microbatches every step: the model must fit them
    batches = _batches(cfg.vocab_size, MICRO) * 8
    losses = _state_and_run(cfg, ParallelConfig(), batches, steps=8, lr=0.3)
    # an untrained model is near-uniform over the (padded) vocabulary
    assert losses[0] == pytest.approx(torch.log(torch.tensor(float(cfg.padded_vocab_size()))).item(), abs=0.15)
    assert losses[-1] < losses[0] - 0.3, losses
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


def test_device_switch(monkeypatch) -> None:
    """MEGATRON_REFLECT_DEVICE: cpu wins over a visible GPU; cuda insists on one; anything else is an error."""
    from megatron_reflect.errors import ConfigError
    from megatron_reflect.runtime.device import DEVICE_ENV, use_cuda

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert use_cuda() is False  # the suite's setting (conftest): a GPU host still runs these tests on the CPU
    monkeypatch.setenv(DEVICE_ENV, "auto")
    assert use_cuda() is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert use_cuda() is False
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    with pytest.raises(ConfigError, match="MEGATRON_REFLECT_DEVICE=cuda but no CUDA device"):
        use_cuda()
    monkeypatch.setenv(DEVICE_ENV, "gpu")
    with pytest.raises(ConfigError, match=r"MEGATRON_REFLECT_DEVICE='gpu': expected one of \['auto', 'cpu', 'cuda'\]"):
        use_cuda()
