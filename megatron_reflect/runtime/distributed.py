"""Distributed initialisation, model-parallel groups and seeding.

One entry point, :func:`init_runtime`, for every launcher: a single process by default,
or the ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT``
variables that ``torchrun`` (or :mod:`megatron_reflect.runtime.launch`) sets.  NCCL with
CUDA, gloo without (:func:`~megatron_reflect.runtime.device.use_cuda` decides, so
``MEGATRON_REFLECT_DEVICE=cpu`` gives the CPU path on a GPU host); the CPU adaptations are
applied here and nowhere else.  The returned :class:`Runtime` is passed explicitly to
whatever needs ranks or the device: no globals of our own (megatron's ``parallel_state``
keeps its process groups, as it must).

Seeds follow Megatron-LM: pipeline stage ``p`` seeds with ``seed + 100 * p``, so stages
do not initialise their layers (or draw dropout masks) from the same stream; tensor-parallel
ranks of a stage share the seed (CPU initialisation splits one full weight; on a GPU
megatron's RNG tracker offsets the tensor-parallel stream itself).
"""

from __future__ import annotations

import datetime
import os
import random
import socket
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from megatron_reflect.errors import ConfigError
from megatron_reflect.runtime.cpu_compat import apply_cpu_compat
from megatron_reflect.runtime.device import use_cuda as _use_cuda

PIPELINE_SEED_STRIDE = 100  # Megatron-LM's per-stage seed offset (training/initialize.py _set_random_seed)


@dataclass
class ParallelConfig:
    """Model-parallel layout; data parallelism is whatever remains of the world size."""

    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: int | None = None
    sequence_parallel: bool = False

    def data_parallel_size(self, world_size: int) -> int:
        model_parallel = self.tensor_model_parallel_size * self.pipeline_model_parallel_size
        if model_parallel < 1 or world_size % model_parallel != 0:
            raise ConfigError(
                f"parallel: world size {world_size} is not divisible by "
                f"tensor_model_parallel_size x pipeline_model_parallel_size = {model_parallel}"
            )
        return world_size // model_parallel


@dataclass(frozen=True)
class Runtime:
    """Who this process is, and where its tensors live."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    tp_size: int
    pp_size: int
    dp_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stage_seed(seed: int, pipeline_rank: int) -> int:
    """The seed of pipeline stage ``pipeline_rank`` (Megatron-LM's offset)."""
    return seed + PIPELINE_SEED_STRIDE * pipeline_rank


def set_seed(seed: int, use_cuda: bool | None = None) -> None:
    """Seed python, numpy and torch, and megatron's model-parallel RNG tracker, with ``seed``.

    On CPU megatron's CUDA RNG tracker cannot hold states, so it is replaced by its
    inference tracker (fork() is a no-op): weights are then initialised on the CPU from the
    default generator, identically for every TP layout, and dropout shares one stream.
    :func:`init_runtime` calls this with the stage's seed (:func:`stage_seed`).
    """
    from megatron.core import tensor_parallel

    use_cuda = _use_cuda() if use_cuda is None else use_cuda
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if use_cuda:
        tensor_parallel.model_parallel_cuda_manual_seed(seed)
    else:
        tensor_parallel.model_parallel_cuda_manual_seed(seed, inference_rng_tracker=True, force_reset_rng=True)


def init_runtime(parallel: ParallelConfig, seed: int = 1234, timeout_minutes: int = 30) -> Runtime:
    """Initialise torch.distributed and megatron's parallel state (idempotent for a process).

    Seeds every generator with ``seed`` offset by the pipeline stage (:func:`stage_seed`);
    a parallel layout that must reproduce another one's weights loads them from one full
    state dict or checkpoint instead of relying on the seed.
    """
    from megatron.core import parallel_state

    use_cuda = _use_cuda()
    if not use_cuda:
        apply_cpu_compat()
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dp_size = parallel.data_parallel_size(world_size)
    if parallel.sequence_parallel and not use_cuda:
        raise ConfigError("parallel.sequence_parallel needs Transformer Engine norms, i.e. a GPU")

    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) are visible: "
                              f"launch at most one process per GPU")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"

    if not dist.is_initialized():
        addr = os.environ.get("MASTER_ADDR", "127.0.0.1")
        port = os.environ.get("MASTER_PORT")
        if port is None:
            if world_size > 1:
                raise ConfigError("WORLD_SIZE > 1 but MASTER_PORT is not set: launch with torchrun")
            # a process of its own: a free port, passed directly, so nothing is left in the
            # environment for a later init (a stale MASTER_PORT would make it wait on a dead store)
            port = str(free_port())
        dist.init_process_group(
            backend=backend,
            init_method=f"tcp://{addr}:{port}",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=parallel.tensor_model_parallel_size,
            pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
            virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_model_parallel_size,
        )
    set_seed(stage_seed(seed, parallel_state.get_pipeline_model_parallel_rank()), use_cuda)
    return Runtime(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        device=device,
        backend=backend,
        tp_size=parallel.tensor_model_parallel_size,
        pp_size=parallel.pipeline_model_parallel_size,
        dp_size=dp_size,
    )


def shutdown_runtime() -> None:
    """Tear down megatron's groups and the process group (so a process can re-initialise)."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
