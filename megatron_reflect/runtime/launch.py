"""Run a function in N local processes over gloo, as torchrun would launch them.

Used by the tests to check tensor and pipeline parallelism on a CPU, and by tools that
need a few ranks on one machine (for example converting a checkpoint at TP=2).  Each
child gets the torchrun environment variables and one CPU thread; return values come back
in rank order; an exception in any child is re-raised in the parent with its traceback.
"""

from __future__ import annotations

import io
import os
import time
import traceback
from typing import Any, Callable

import torch
import torch.multiprocessing as mp

from megatron_reflect.runtime.distributed import free_port


def _child(rank: int, world_size: int, port: int, threads: int, device: str | None, fn: Callable[..., Any],
           args: tuple, queue: Any) -> None:
    if device is not None:
        from megatron_reflect.runtime.device import DEVICE_ENV

        os.environ[DEVICE_ENV] = device
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(threads)
    try:
        # Results travel as bytes: torch's shared-memory tensor pickling would point at
        # storage that disappears when this process exits.
        buffer = io.BytesIO()
        torch.save(fn(*args), buffer)
        queue.put((rank, True, buffer.getvalue()))
    except BaseException:  # noqa: BLE001 - forwarded to the parent verbatim
        queue.put((rank, False, traceback.format_exc()))
    finally:
        from megatron_reflect.runtime.distributed import shutdown_runtime

        shutdown_runtime()


def run_distributed(fn: Callable[..., Any], world_size: int, *args: Any, threads_per_rank: int = 1,
                    timeout_s: float = 600.0, device: str | None = None) -> list[Any]:
    """Call ``fn(*args)`` on ranks 0..world_size-1 (spawned) and return their results by rank.

    ``fn`` must be importable (module level) and its result picklable.  ``device`` (``cpu`` /
    ``cuda``) sets ``MEGATRON_REFLECT_DEVICE`` in the ranks; default: they inherit this process's.
    """
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = free_port()
    procs = [
        ctx.Process(target=_child, args=(r, world_size, port, threads_per_rank, device, fn, args, queue), daemon=False)
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    failures: list[str] = []
    deadline = time.monotonic() + timeout_s
    while len(results) + len(failures) < world_size:
        if time.monotonic() > deadline:
            break
        if queue.empty():
            if any(p.exitcode not in (None, 0) for p in procs) and queue.empty():
                time.sleep(0.5)
                if queue.empty():
                    break
            time.sleep(0.05)
            continue
        rank, ok, value = queue.get()
        if ok:
            results[rank] = torch.load(io.BytesIO(value), weights_only=False)
        else:
            failures.append(f"rank {rank}:\n{value}")
    for p in procs:
        p.join(timeout=30 if not failures else 5)
        if p.is_alive():
            p.kill()
    if failures:
        raise RuntimeError("distributed run failed\n" + "\n".join(failures))
    if len(results) < world_size:
        codes = [p.exitcode for p in procs]
        raise RuntimeError(f"distributed run: {world_size - len(results)} rank(s) gave no result (exit codes {codes})")
    return [results[r] for r in range(world_size)]
