"""Process-level runtime: distributed initialisation, seeding and the CPU adaptations."""

from megatron_reflect.runtime.distributed import (
    ParallelConfig,
    Runtime,
    init_runtime,
    set_seed,
    shutdown_runtime,
)

__all__ = ["ParallelConfig", "Runtime", "init_runtime", "set_seed", "shutdown_runtime"]
