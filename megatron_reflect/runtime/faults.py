"""A deterministic hard kill for the crash-safety tests: ``MEGATRON_REFLECT_KILL_AT=point:key``.

Long jobs must survive SIGKILL (preemption, the OOM killer) at any moment.  Timing a kill
from outside is flaky, so the writers call :func:`kill_point` at the moments that matter
and the process SIGKILLs *itself* there when the variable names that point:

* ``train_step:<N>``       after optimizer step N (before any checkpoint of step N);
* ``checkpoint_commit:<dir name>``  a checkpoint's shards are written under its temporary
  name, but its metadata and the rename that completes it are not (``step_00000004``);
* ``export_tensor:<K>``    a Hugging Face export has written K tensors of its shards.

Unset (always, outside tests) it costs one dictionary lookup per call.
"""

from __future__ import annotations

import os
import signal

KILL_ENV = "MEGATRON_REFLECT_KILL_AT"


def kill_point(point: str, key: object) -> None:
    """SIGKILL this process if ``MEGATRON_REFLECT_KILL_AT`` is ``f"{point}:{key}"``."""
    target = os.environ.get(KILL_ENV)
    if target is not None and target == f"{point}:{key}":
        os.kill(os.getpid(), signal.SIGKILL)
