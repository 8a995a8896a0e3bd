"""The adaptations megatron-core 0.19 needs to run on a machine without CUDA.

Everything CPU-specific lives here, is applied once per process by
:func:`apply_cpu_compat`, and only on the CPU path (no GPU, or ``MEGATRON_REFLECT_DEVICE=cpu``
on a GPU host: then this process gives up CUDA for good); on the GPU path this module
changes nothing.  Each patch names the megatron-core line that needs it
(0.19.2; see shared/research/megatron-core-on-cpu.md).  What it buys: GPTModel forward
and backward, TP and PP over gloo, the pipeline schedules and torch_dist checkpoints all
run on CPU, so the parallel code paths are tested in CPU CI.  What it does not cover:
megatron's DDP / distributed optimizer and grad clipping (CUDA-only), so the CPU trainer
uses a plain torch optimizer.
"""

from __future__ import annotations

import types
from typing import Any

import torch

from megatron_reflect.runtime.device import use_cuda

_MARK = "_megatron_reflect_cpu_compat"


def _to_cpu_device(kwargs: dict[str, Any]) -> dict[str, Any]:
    device = kwargs.get("device")
    if device is not None and str(device).startswith("cuda"):
        kwargs["device"] = "cpu"
    return kwargs


def _cpu_torch_proxy() -> types.ModuleType:
    """A stand-in for the ``torch`` module whose tensor factories map device='cuda' to CPU.

    Installed as the ``torch`` name of the few megatron modules that create tensors with a
    literal ``device="cuda"``; every other attribute is torch's own.
    """
    proxy = types.ModuleType("torch_cpu_proxy")
    proxy.__dict__.update(torch.__dict__)
    for name in ("zeros", "ones", "empty", "full", "tensor", "arange"):
        real = getattr(torch, name)

        def factory(*args: Any, _real: Any = real, **kwargs: Any) -> torch.Tensor:
            return _real(*args, **_to_cpu_device(kwargs))

        setattr(proxy, name, factory)
    return proxy


def apply_cpu_compat() -> bool:
    """Patch megatron-core for CPU execution; idempotent. Returns True if patches are active."""
    if use_cuda():
        return False
    if getattr(torch.cuda, _MARK, False):
        return True

    # torch.cuda.current_device() is used as a device for new tensors in:
    #   core/utils.py:715 GlobalMemoryBuffer.get_tensor (attention workspace),
    #   models/common/embeddings/rotary_pos_embedding.py:162 and :305 (RoPE inv_freq),
    #   pipeline_parallel/p2p_communication.py:211-223, :334, :342 (PP recv buffers),
    #   dist_checkpointing/strategies/state_dict_saver.py:252 (save failure flag).
    # Returning "cpu" makes all of them allocate on the CPU.
    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment]
    # torch.cuda.synchronize() is called unconditionally in
    #   pipeline_parallel/p2p_communication.py:263 and :419 (after batch_isend_irecv),
    #   dist_checkpointing/strategies/filesystem_async.py:248 (preload before async save).
    # There is nothing to wait for on CPU.
    torch.cuda.synchronize = lambda device=None: None  # type: ignore[assignment]

    # Literal device="cuda" tensors:
    #   pipeline_parallel/schedules.py:749, :1121, :2292 `total_num_tokens = torch.zeros(..., device="cuda")`
    #     (every schedule, even PP=1's forward_backward_no_pipelining);
    #   dist_checkpointing/strategies/state_dict_saver.py:204 (`device='cuda'` reuse check);
    #   transformer/utils.py:39 get_default_causal_mask (attention without an explicit mask).
    from megatron.core.dist_checkpointing.strategies import state_dict_saver
    from megatron.core.pipeline_parallel import schedules
    from megatron.core.transformer import utils as transformer_utils

    proxy = _cpu_torch_proxy()
    for module in (schedules, state_dict_saver, transformer_utils):
        module.torch = proxy  # type: ignore[attr-defined]

    # models/common/language_module/language_module.py:307 moves the tied embedding to CUDA
    # (`weight.data = weight.data.cuda()`) before the first/last pipeline stage all-reduce
    # that makes both copies equal (PP > 1 with tied embeddings).  Keep it on the CPU.
    from megatron.core.models.common.language_module.language_module import LanguageModule

    original_setup = LanguageModule.setup_embeddings_and_output_layer

    def setup_on_cpu(self: LanguageModule) -> None:
        real_cuda = torch.Tensor.cuda
        torch.Tensor.cuda = lambda t, *a, **k: t  # type: ignore[method-assign]
        try:
            original_setup(self)
        finally:
            torch.Tensor.cuda = real_cuda  # type: ignore[method-assign]

    LanguageModule.setup_embeddings_and_output_layer = setup_on_cpu  # type: ignore[method-assign]

    setattr(torch.cuda, _MARK, True)
    return True
