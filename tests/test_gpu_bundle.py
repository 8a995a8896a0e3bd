"""tools/gpu_bundle.sh: the folder a bare, offline CUDA host needs for gpu_check's tier without Transformer
Engine is at most 60 MiB, installs with ``pip install --no-index --no-deps --target`` into a fresh
directory, and with nothing else but what such a host has, trains, saves and resumes.

The "bare host" is simulated on this machine: a site directory linking only the dependency closure (by
package metadata) of torch, transformers, tokenizers, sentencepiece and pyarrow, and an interpreter
started with ``-S`` so the project's virtual environment is not on its path.  Needs the package index
(or pip's cache) for the wheels; skipped only when the download fails for want of a network.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HOST = ("torch", "transformers", "tokenizers", "sentencepiece", "pyarrow")  # what the bare host has
NETWORK = ("NewConnectionError", "Temporary failure in name resolution", "Max retries exceeded",
           "Network is unreachable")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def host_distributions() -> dict[str, md.Distribution]:
    """HOST and everything they require (extras left out), as installed here."""
    installed = {_norm(d.metadata["Name"]): d for d in md.distributions()}
    found: dict[str, md.Distribution] = {}
    todo = [_norm(n) for n in HOST]
    while todo:
        name = todo.pop()
        if name in found or name not in installed:
            continue
        found[name] = installed[name]
        for req in installed[name].requires or []:
            if "extra ==" not in req:
                todo.append(_norm(re.match(r"\s*([A-Za-z0-9_.\-]+)", req).group(1)))
    return found


def bare_site(dest: Path) -> list[str]:
    """Link the host distributions' top-level files into ``dest``; their names."""
    dest.mkdir()
    dists = host_distributions()
    for dist in dists.values():
        for top in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            src = Path(dist.locate_file(top))
            if src.exists() and top != "__pycache__" and not top.endswith(".pth") and not (dest / top).exists():
                (dest / top).symlink_to(src)
    return sorted(dists)


BARE_RUN = """
import pathlib, site, sys
bare, target, repo, tokenizer, work = sys.argv[1:6]
site.addsitedir(bare)
sys.path[:0] = [target, repo, repo + "/tools"]
import megatron.core
assert megatron.core.__file__.startswith(target), megatron.core.__file__
for absent in ("transformer_engine", "apex", "sklearn", "tensorboard", "zstandard"):
    try:
        __import__(absent)
    except ImportError:
        continue
    raise SystemExit(f"{absent} importable: the simulated host is not bare")
import gpu_check
info = gpu_check.tokenizer_info(tokenizer)
print(gpu_check.resume_check(pathlib.Path(work), int(info["tokenizer"]["vocab_size"]), info,
                             preset="tiny", seq=32, steps=4))
"""


def test_bundle_installs_offline_into_a_clean_target_and_runs(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    made = subprocess.run(["bash", str(ROOT / "tools" / "gpu_bundle.sh"), str(bundle)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHON": sys.executable})
    if made.returncode != 0 and any(marker in made.stderr for marker in NETWORK):
        pytest.skip(f"no package index reachable for the wheels: {made.stderr.strip().splitlines()[-1]}")
    assert made.returncode == 0, made.stderr
    files = [p for p in bundle.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 60 * 2**20
    wheels = sorted(p.name.split("-")[0] for p in (bundle / "wheels").iterdir())
    assert wheels == ["megatron_core", "psutil"]
    assert (bundle / "tokenizer" / "tokenizer.json").is_file()
    assert not any(p.suffix == ".safetensors" for p in files)  # tokenizer files only, no weights
    command = made.stdout.strip().splitlines()[-1]
    assert "pip install --no-index --no-deps --target" in command and "tools/gpu_check.sh --tokenizer-dir" in command

    target = tmp_path / "site"  # the install half of the printed command
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
                    "--no-deps", "--target", str(target), *map(str, (bundle / "wheels").iterdir())], check=True,
                   capture_output=True, text=True)
    names = bare_site(tmp_path / "bare")
    assert "torch" in names and "megatron-core" not in names and "psutil" not in names
    env = {**os.environ, "MEGATRON_REFLECT_DEVICE": "cpu", "PYTHONPATH": ""}
    run = subprocess.run([sys.executable, "-S", "-c", BARE_RUN, str(tmp_path / "bare"), str(target), str(ROOT),
                          str(bundle / "tokenizer"), str(tmp_path / "resume")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "resumed from step_00000002" in run.stdout and "max |diff| 0.00e+00" in run.stdout, run.stdout
