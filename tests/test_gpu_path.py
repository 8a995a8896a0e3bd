"""The GPU path's logic that a CPU can check (issue 22): checkpoints without Transformer Engine's
``_extra_state`` load into a model that has it, the SDPA core attention equals megatron's
``DotProductAttention``, the MFU formula and the peak table, and the DDP / optimizer overlap
settings handed to megatron-core.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from megatron_reflect.model import PrecisionConfig, build_gpt_model, get_preset
from megatron_reflect.runtime import ParallelConfig
from megatron_reflect.runtime.launch import run_distributed

GQA = dataclasses.replace(get_preset("tiny"), num_layers=2, hidden_size=64, num_attention_heads=4,
                          num_query_groups=2, vocab_size=256, layer_spec="local")


def _logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    return model(tokens, positions, None)


def _plain_checkpoint_into_extra_state_model(path: str) -> dict:
    from megatron_reflect.checkpoint import load_model_weights, model_sharded_state_dict, save_checkpoint
    from megatron_reflect.runtime import init_runtime

    init_runtime(ParallelConfig(), seed=5)
    plain = build_gpt_model(GQA, ParallelConfig(), PrecisionConfig(attention="megatron"))
    save_checkpoint(path, [plain], GQA, {"step": 0})
    torch.manual_seed(99)  # other initial weights, so the load has something to do
    sdpa = build_gpt_model(GQA, ParallelConfig(), PrecisionConfig(attention="sdpa"))
    wanted = {k for k in model_sharded_state_dict([sdpa]) if k.endswith("_extra_state")}
    saved = {k for k in model_sharded_state_dict([plain]) if k.endswith("_extra_state")}
    embeddings = sdpa.embedding.word_embeddings.weight, plain.embedding.word_embeddings.weight
    before = float((embeddings[0] - embeddings[1]).detach().abs().max())
    load_model_weights(path, [sdpa])
    tokens = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = float((_logits(sdpa, tokens) - _logits(plain, tokens)).abs().max())
    return {"new_keys": sorted(wanted - saved), "before": before, "diff": diff}


def test_plain_spec_checkpoint_loads_into_a_model_expecting_extra_state(tmp_path: Path) -> None:
    """The TE-spec case on a CPU: the loading model has ``_extra_state`` entries the checkpoint lacks."""
    [r] = run_distributed(_plain_checkpoint_into_extra_state_model, 1, str(tmp_path / "ckpt"))
    assert r["new_keys"] == [f"model.decoder.layers.{i}.self_attention.core_attention._extra_state" for i in (0, 1)]
    assert r["before"] > 0.01  # the weights really came from the checkpoint ...
    assert r["diff"] < 1e-5  # ... and the two attentions compute the same logits


def test_a_missing_weight_still_fails_by_name() -> None:
    from megatron_reflect.checkpoint import is_optional

    assert is_optional("model.decoder.layers.self_attention.core_attention._extra_state")
    assert not is_optional("model.decoder.layers.self_attention.linear_qkv.weight")


def _attention_pair(mask_kind: str) -> dict:
    """SDPAttention against megatron's DotProductAttention on the same q, k, v (fp32, GQA)."""
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_reflect.model.attention import SDPAttention
    from megatron_reflect.model.provider import build_transformer_config
    from megatron_reflect.runtime import init_runtime

    init_runtime(ParallelConfig(), seed=1)  # idempotent: the second call only reseeds
    config = build_transformer_config(GQA, ParallelConfig(), PrecisionConfig())
    ref = DotProductAttention(config, 1, AttnMaskType.causal, "self")
    ours = SDPAttention(config, 1, AttnMaskType.causal, "self")
    s, b, heads, groups, hn = 24, 3, 4, 2, 16
    g = torch.Generator().manual_seed(0)
    q = torch.randn(s, b, heads, hn, generator=g, requires_grad=True)
    k = torch.randn(s, b, groups, hn, generator=g, requires_grad=True)
    v = torch.randn(s, b, groups, hn, generator=g, requires_grad=True)
    mask = None
    if mask_kind == "padding":  # causal + the last 5 keys of sample 1 padded (megatron: True = masked)
        mask = torch.ones(s, s, dtype=torch.bool).triu(1).expand(b, 1, s, s).clone()
        mask[1, :, :, s - 5:] = True
        mask[1, :, s - 5:, :] = torch.ones(s, s, dtype=torch.bool).triu(1)[s - 5:]  # padded rows see the past
    out = {}
    for name, module in (("ref", ref), ("ours", ours)):
        y = module(q, k, v, mask)
        grads = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum(), (q, k, v))
        out[name] = (y.detach(), grads)
    dy = float((out["ref"][0] - out["ours"][0]).abs().max())
    dg = max(float((a - c).abs().max()) for a, c in zip(out["ref"][1], out["ours"][1]))
    return {"shape": tuple(out["ours"][0].shape), "dy": dy, "dg": dg, "scale": float(out["ref"][0].abs().max())}


def _attention_checks() -> dict:
    """Both mask forms and the bf16 path in one spawned rank (each spawn costs a megatron import)."""
    return {"causal": _attention_pair("causal"), "padding": _attention_pair("padding"), "bf16": _bf16_attention()}


def test_sdpa_attention_equals_megatron_dot_product_attention() -> None:
    [r] = run_distributed(_attention_checks, 1)
    for kind in ("causal", "padding"):
        assert r[kind]["shape"] == (24, 3, 64)
        assert r[kind]["scale"] > 0.1
        assert r[kind]["dy"] < 1e-5 and r[kind]["dg"] < 1e-5, r
    assert r["bf16"] < 0.03  # bf16 on the CPU (computed in fp32): rounding of the inputs and the output only


def test_mfu_formula_matches_a_hand_computation_for_the_1p7b_preset() -> None:
    """Megatron-Bridge / NeMo: 6 x (weights' MACs + causal attention L s h) per token."""
    m = get_preset("smollm2-1.7b")
    L, h, f, V, s = 24, 2048, 8192, 49152, 2048
    assert (m.num_layers, m.hidden_size, m.ffn_hidden_size, m.vocab_size) == (L, h, f, V)
    # NeMo's llama formula per sequence (gbs = 1), GQA with 32 of 32 groups, causal: 0.5
    attention = 3 * 2 * L * s * h * h * (1 + (32 / 32) * 2 + (s / h) * 2 * 0.5 + 1)
    mlp = 3 * 2 * L * s * h * (1 + 2) * f
    vocab = 3 * 2 * s * h * V
    hand = (attention + mlp + vocab) / s
    assert m.flops_per_token(s) == pytest.approx(hand, rel=1e-12)
    assert m.flops_per_token(s) / 1e9 == pytest.approx(10.87, abs=0.005)


def test_peak_is_chosen_from_the_device_name() -> None:
    from megatron_reflect.train.mfu import mfu, peak_for

    assert peak_for("NVIDIA H100 80GB HBM3").bf16 == 989e12
    assert peak_for("NVIDIA H100 PCIe").bf16 == 756e12
    assert peak_for("NVIDIA H100 NVL").bf16 == 835e12
    assert peak_for("NVIDIA H200").fp8 == 1979e12
    assert peak_for("NVIDIA GH200 480GB").device == "GH200"
    assert peak_for("NVIDIA A100-SXM4-80GB").fp8 is None
    assert peak_for("NVIDIA GeForce RTX 4090") is None  # unknown: no MFU rather than a guess
    given = peak_for("NVIDIA GeForce RTX 4090", override_tflops=165.0)
    assert given.bf16 == 165e12 and "given" in given.device
    assert peak_for("NVIDIA H100 PCIe", override_tflops=700).bf16 == 700e12  # the flag wins
    pcie = peak_for("NVIDIA H100 PCIe")
    assert mfu(378e12, pcie, fp8=False) == {"mfu": 0.5}
    both = mfu(756.5e12, pcie, fp8=True)
    assert both["mfu"] == pytest.approx(756.5 / 756) and both["mfu_fp8_peak"] == pytest.approx(0.5)
    assert mfu(1e12, None, fp8=False) == {}


def test_ddp_and_optimizer_overlap_settings() -> None:
    from megatron_reflect.config import resolve
    from megatron_reflect.train.loop import ddp_config
    from megatron_reflect.train.optim import megatron_optimizer_config
    from megatron_reflect.train.recipes import get_recipe

    cfg = get_recipe("smollm2-1.7b")
    ddp = ddp_config(cfg)
    assert ddp.overlap_grad_reduce and ddp.overlap_param_gather and ddp.use_distributed_optimizer
    assert ddp.grad_reduce_in_fp32 and not ddp.reduce_scatter_with_fp32_accumulation
    wire = ddp_config(resolve(cfg, None, ["precision.grad_reduce=bf16"]))
    assert not wire.grad_reduce_in_fp32 and wire.reduce_scatter_with_fp32_accumulation
    opt = megatron_optimizer_config(cfg.optim, bf16=True, distributed=True)
    assert opt.use_distributed_optimizer and opt.bf16 and opt.params_dtype == torch.bfloat16
    assert opt.clip_grad == cfg.optim.clip_grad and opt.adam_beta2 == 0.95


def test_fp8_amax_history_and_wgrad_fusion_per_layer_type() -> None:
    """Delayed scaling's amax history is validated; TE wgrad fusion is decided per layer type."""
    from megatron_reflect.errors import ConfigError
    from megatron_reflect.model.provider import check_precision, wgrad_fusion_plan as plan

    with pytest.raises(ConfigError, match="fp8_amax_history_len"):
        check_precision(get_preset("smollm2-1.7b"), ParallelConfig(), PrecisionConfig(fp8_amax_history_len=0))
    on, off = PrecisionConfig(dtype="bf16"), PrecisionConfig(dtype="bf16", fusions=False)
    te, apex = "transformer layers (TE)", "megatron linears (apex)"
    assert plan("te", on, True, on_gpu=True, apex=False) == {te: True, apex: False}  # TE fuses natively
    assert plan("te", on, True, on_gpu=True, apex=True) == {te: True, apex: True}
    assert plan("local", on, True, on_gpu=True, apex=False) == {te: False, apex: False}
    assert not any(plan("te", off, True, on_gpu=True, apex=True).values())
    assert not any(plan("te", on, False, on_gpu=True, apex=True).values())  # no megatron DDP, no main_grad
    assert not any(plan("te", on, True, on_gpu=False, apex=True).values())
    assert plan("local", on, True) == {te: False, apex: False}  # this CPU


def _fused_cross_entropy() -> float:
    from megatron_reflect.runtime import init_runtime

    init_runtime(ParallelConfig(), seed=1)
    model = build_gpt_model(GQA, ParallelConfig(), PrecisionConfig())
    g = torch.Generator().manual_seed(0)
    tokens, labels = torch.randint(0, 256, (2, 16), generator=g), torch.randint(0, 256, (2, 16), generator=g)
    positions = torch.arange(16).expand(2, 16)
    with torch.no_grad():
        plain = model(tokens, positions, None, labels=labels)
        model.config.cross_entropy_loss_fusion = True  # what build_transformer_config sets on a GPU with fusions
        fused = model(tokens, positions, None, labels=labels)
    assert fused.shape == plain.shape == (2, 16)
    return float((fused - plain).abs().max())


def test_fused_cross_entropy_gives_the_same_per_token_loss() -> None:
    """megatron's fused vocab-parallel cross entropy (on with fusions on a GPU) keeps the per-token [b, s] loss."""
    [diff] = run_distributed(_fused_cross_entropy, 1)
    assert diff < 1e-5


def _overlap_hooks() -> tuple[int, int, int, int]:
    from megatron.core.distributed import DistributedDataParallel

    from megatron_reflect.runtime import init_runtime
    from megatron_reflect.train.loop import _Run, _synced_params, ddp_config
    from megatron_reflect.train.recipes import get_recipe

    init_runtime(ParallelConfig(), seed=1)
    model = build_gpt_model(GQA, ParallelConfig(), PrecisionConfig())
    ddp = DistributedDataParallel(config=model.config, ddp_config=ddp_config(get_recipe("smollm2-1.7b")), module=model)
    run = _Run(None, None, None, [ddp], [model], None, 1, None, {})  # only the chunks matter here
    before = len(ddp.remove_forward_pre_hook_handles)
    with _synced_params(run):
        inside = len(ddp.remove_forward_pre_hook_handles)
    after = len(ddp.remove_forward_pre_hook_handles)
    with _synced_params(_Run(None, None, None, [model], [model], None, 1, None, {})):  # the CPU path: no-op
        pass
    return before, inside, after, sum(1 for _ in model.modules())


def test_overlapped_param_gather_is_finished_around_eval_and_saves() -> None:
    """megatron DDP (built on the CPU here) with overlap_param_gather: the forward pre-hooks that wait for the
    all-gather are removed, with a forced sync, inside ``_synced_params`` and put back after it."""
    [(before, inside, after, modules)] = run_distributed(_overlap_hooks, 1)
    assert before == after == modules and inside == 0


def _init_twice_without_launcher() -> tuple[bool, bool, str]:
    import os

    from megatron_reflect.runtime import init_runtime, shutdown_runtime
    from megatron_reflect.runtime.device import device_for_world

    for key in ("MASTER_PORT", "MASTER_ADDR", "WORLD_SIZE", "RANK", "LOCAL_RANK"):
        os.environ.pop(key, None)
    init_runtime(ParallelConfig())
    left = "MASTER_PORT" in os.environ
    shutdown_runtime()
    init_runtime(ParallelConfig())  # a later train() in the same process (gpu_check's te_check, then its runs)
    shutdown_runtime()
    return left, "MASTER_ADDR" in os.environ, device_for_world(2)


def test_a_single_process_runtime_leaves_no_master_port_behind() -> None:
    [(port_left, addr_left, tp2_device)] = run_distributed(_init_twice_without_launcher, 1)
    assert not port_left and not addr_left
    assert tp2_device == "cpu"  # TP=2 import / --verify-tp 2 without two GPUs: the CPU, not a LOCAL_RANK error


def _bf16_attention() -> float:
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_reflect.model.attention import SDPAttention
    from megatron_reflect.model.provider import build_transformer_config
    from megatron_reflect.runtime import init_runtime

    init_runtime(ParallelConfig(), seed=1)
    config = build_transformer_config(GQA, ParallelConfig(), PrecisionConfig(dtype="bf16"))
    ours = SDPAttention(config, 1, AttnMaskType.causal, "self")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(16, 2, n, 16, generator=g) for n in (4, 2, 2))
    low = ours(q.bfloat16(), k.bfloat16(), v.bfloat16(), None)
    assert low.dtype == torch.bfloat16
    return float((low.float() - ours(q, k, v, None)).abs().max())
