"""Which device this process computes on: the one switch every GPU/CPU choice goes through.

CUDA when a GPU is visible, the CPU otherwise; ``MEGATRON_REFLECT_DEVICE=cpu`` forces the
CPU path on a GPU host (gloo, the CPU adaptations, the plain torch optimizer) and
``MEGATRON_REFLECT_DEVICE=cuda`` insists on a GPU (an error where none is visible).  The
test suite sets ``cpu`` for every test not marked ``gpu``, so the multi-rank "CPU" tests
use gloo and never ``torch.cuda.set_device(rank)`` on a one-GPU host.  Reading an
environment variable per call costs nothing next to what the callers then do.
"""

from __future__ import annotations

import os

import torch

from megatron_reflect.errors import ConfigError

DEVICE_ENV = "MEGATRON_REFLECT_DEVICE"
_CHOICES = ("auto", "cpu", "cuda")


def use_cuda() -> bool:
    """True when this process should put its model and collectives on CUDA."""
    choice = os.environ.get(DEVICE_ENV, "auto").strip().lower() or "auto"
    if choice not in _CHOICES:
        raise ConfigError(f"{DEVICE_ENV}={choice!r}: expected one of {list(_CHOICES)}")
    if choice == "cpu":
        return False
    available = torch.cuda.is_available()
    if choice == "cuda" and not available:
        raise ConfigError(f"{DEVICE_ENV}=cuda but no CUDA device is visible to this process")
    return available


def device_for_world(world_size: int) -> str:
    """Where ``world_size`` local ranks (one GPU each) compute: ``cuda`` if there are enough GPUs, else ``cpu``.

    For the tools that spawn their own ranks (checkpoint import, ``--verify-tp``): TP=2 on a
    one-GPU host runs on the CPU instead of failing on ``LOCAL_RANK 1``.
    """
    return "cuda" if use_cuda() and world_size <= torch.cuda.device_count() else "cpu"
