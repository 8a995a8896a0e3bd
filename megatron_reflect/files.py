"""Writes that never leave a half-written file.

Why: a killed job must lose nothing and leave nothing that looks complete but is not.  Every
text output (stats, summaries, SFT parts, configs) is written to a temporary name in the same
folder, then renamed into place, which is atomic on one file system.  Large binary outputs
(indexed datasets, checkpoints, Parquet tables, plots) follow the same rule in their writers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` through a temporary name; make the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_json_atomic(path: str | Path, obj: Any, indent: int | None = 1) -> Path:
    """``obj`` as JSON (non-JSON values through ``str``), written as ``write_text_atomic`` writes."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, default=str))
