"""Optional NVIDIA DALI loader yielding the same microbatches as the torch DataLoader.

The design card names DALI, so it is offered: the samples come from the same dataset and
the same :class:`~megatron_reflect.train.data_loading.MicrobatchSampler` through a DALI
``external_source``; DALI prefetches batches on its own threads and, on a GPU, copies them
to the device inside the pipeline.  Our samples are already tokenized int64/uint8 arrays
read from a memory map (no decoding, no augmentation), so DALI has little to accelerate:
measure with ``benchmarks/bench_data_loading.py`` before choosing it; the torch loader is
the default.  Needs the ``dali`` extra (``pip install 'megatron_reflect[dali]'``,
nvidia-dali-cuda130 for the CUDA 13 image, ~1 GB); imported only when ``data_loader=dali``.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import numpy as np
import torch

from megatron_reflect.errors import ConfigError
from megatron_reflect.runtime.device import use_cuda

KEYS = ("tokens", "labels", "loss_mask", "position_ids", "reflection_meta")


def dali_microbatches(dataset: Any, sampler: Iterable[list[int]], num_threads: int = 1,
                      prefetch: int = 2) -> Iterator[dict[str, torch.Tensor]]:
    """Microbatch dicts (the ``KEYS``) for the index lists of ``sampler``, through DALI."""
    try:
        from nvidia.dali import fn, pipeline_def
        from nvidia.dali.plugin.pytorch import DALIGenericIterator
    except ImportError as exc:
        raise ConfigError("data_loader=dali needs NVIDIA DALI: pip install 'megatron_reflect[dali]' "
                          "(nvidia-dali-cuda130; nvidia-dali-cuda120 on CUDA 12); "
                          f"or use data_loader=torch ({exc})") from None

    batches = iter(sampler)
    first = next(batches, None)
    if first is None:
        return iter(())
    pending = [first]

    def source() -> tuple[list[np.ndarray], ...]:
        indices = pending.pop() if pending else next(batches)  # StopIteration ends the epoch
        samples = [dataset[i] for i in indices]
        return tuple([np.asarray(s[key]) for s in samples] for key in KEYS)

    on_gpu = use_cuda()

    @pipeline_def(batch_size=len(first), num_threads=num_threads, prefetch_queue_depth=prefetch,
                  device_id=torch.cuda.current_device() if on_gpu else None)
    def pipeline():
        outputs = fn.external_source(source=source, num_outputs=len(KEYS), batch=True)
        return tuple(o.gpu() for o in outputs) if on_gpu else tuple(outputs)

    pipe = pipeline()
    pipe.build()
    return (out[0] for out in DALIGenericIterator(pipe, list(KEYS), auto_reset=False))
