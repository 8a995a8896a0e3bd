"""Process-level runtime: distributed initialisation, seeding, the device switch and the CPU adaptations."""

from megatron_reflect.runtime.device import DEVICE_ENV, use_cuda
from megatron_reflect.runtime.distributed import (
    ParallelConfig,
    Runtime,
    init_runtime,
    set_seed,
    shutdown_runtime,
    stage_seed,
)

__all__ = ["DEVICE_ENV", "ParallelConfig", "Runtime", "init_runtime", "set_seed", "shutdown_runtime", "stage_seed",
           "use_cuda"]
