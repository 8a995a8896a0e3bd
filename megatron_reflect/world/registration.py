"""The registration of a MedSafetyWorld confirmatory test, and the guard that keeps its test seeds
unseen until it is committed.

A test seed is spent once looked at, so the registration (``configs/world/registration.yaml``)
names fresh test seeds, the frozen configuration and its hash, the code commit, the arithmetic
environment and the analysis before any of those seeds runs.  ``guard_test_seeds`` refuses to run
a registration's test seeds while its ``status`` is not ``registered``, and refuses a registered
one whose configuration hash no longer matches the configuration it is asked to run.
``config_hash`` is the SHA-256 of the canonical JSON of every section a figure depends on
(``experiment.RESULT_SECTIONS`` and the variants; the world's seed excluded).  Cost: microseconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

from megatron_reflect.errors import ConfigError

REGISTERED = "registered"
HASHED_SECTIONS: tuple[str, ...] = ("world", "variant", "model", "pretrain", "sft", "eval")


def config_hash(config: dict) -> str:
    """SHA-256 of the configuration's result-bearing sections (``config``: the experiment as plain data)."""
    missing = [k for k in HASHED_SECTIONS + ("variants",) if k not in config]
    if missing:
        raise ConfigError(f"config_hash: the configuration has no {', '.join(missing)} section")
    data = {k: config[k] for k in HASHED_SECTIONS}
    data["world"] = {k: v for k, v in data["world"].items() if k != "seed"}
    data["variants"] = list(config["variants"])
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def load_registration(path: str | Path) -> dict:
    """The registration file as data, its required fields checked (errors name the file and field)."""
    import yaml

    path = Path(path)
    data = yaml.safe_load(path.read_text()) or {}
    for key in ("status", "test_seeds", "calibration", "configuration", "arithmetic", "analysis",
                "success_criterion", "controls"):
        if key not in data:
            raise ConfigError(f"{path}: field {key!r} is missing")
    seeds = data["test_seeds"]
    if not isinstance(seeds, list) or len(seeds) < 8 or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{path}: test_seeds must list at least 8 distinct seeds, got {seeds!r}")
    cal = data["calibration"].get("seeds", [])
    if set(seeds) & set(cal):
        raise ConfigError(f"{path}: test_seeds and calibration.seeds overlap: {sorted(set(seeds) & set(cal))}")
    spent = set(seeds) & set(data.get("spent_seeds", []))
    if spent:
        raise ConfigError(f"{path}: test_seeds {sorted(spent)} were used by an earlier run (spent_seeds)")
    return data


def guard_test_seeds(seeds, config: dict, path: str | Path) -> None:
    """Refuse to run any of ``path``'s test seeds before it is registered, or with another
    configuration than the registered one (``config``: the experiment as plain data)."""
    path = Path(path)
    if not path.is_file():
        return
    reg = load_registration(path)
    asked = sorted(set(seeds) & set(reg["test_seeds"]))
    if not asked:
        return
    if reg["status"] != REGISTERED:
        raise ConfigError(f"{path}: seeds {asked} are the test seeds of a registration whose status is "
                          f"{reg['status']!r}; a test seed is spent once looked at: commit the registration first")
    want = reg["configuration"].get("sha256")
    got = config_hash(config)
    if want != got:
        raise ConfigError(f"{path}: configuration.sha256 is {want}, but the configuration asked to run on test seeds "
                          f"{asked} hashes to {got}")


def arithmetic_environment(threads: int, precision: str) -> dict:
    """What decides the floating-point path of a run on a CPU: torch and MKL, the thread count, MKL's
    code-path setting, the precision and the processor."""
    import torch

    mkl = torch.backends.mkl.is_available()
    return {"torch": torch.__version__, "mkl": mkl, "mkl_cbwr": os.environ.get("MKL_CBWR", "unset (MKL's default path)"),
            "torch_threads": threads, "precision": precision, "processor": platform.processor() or platform.machine(),
            "python": platform.python_version()}
