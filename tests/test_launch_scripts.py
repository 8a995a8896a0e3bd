"""The H100 launch scripts (examples/pretrain_smollm2_1p7b_fineweb_edu.{sh,sbatch}) and tools/gpu_check.sh,
run where they can be on a CPU: the process count per node follows the visible GPUs, the batch divides
for 1, 2 and 8 GPUs per node, checkpoints go to a directory every node mounts, no GPU gives one line.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SH = ROOT / "examples" / "pretrain_smollm2_1p7b_fineweb_edu.sh"
SBATCH = ROOT / "examples" / "pretrain_smollm2_1p7b_fineweb_edu.sbatch"
SCRIPTS = [SH, SBATCH, ROOT / "tools" / "gpu_check.sh", ROOT / "tools" / "gpu_bundle.sh"]


def _run(script: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHON": sys.executable, **env})


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_scripts_are_shellcheck_clean() -> None:
    proc = subprocess.run(["shellcheck", *map(str, SCRIPTS)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_launch_script_starts_one_process_per_gpu(tmp_path: Path) -> None:
    (tmp_path / "d_stats.json").write_text("{}")
    data = {"DATA_PREFIX": str(tmp_path / "d")}
    for gpus in ("1", "2", "8"):
        proc = _run(SH, {**data, "DRY_RUN": "1", "GPUS_PER_NODE": gpus, "NNODES": "8", "NODE_RANK": "3"})
        assert proc.returncode == 0, proc.stderr
        assert f"--nnodes 8 --node_rank 3 --nproc_per_node {gpus} " in proc.stdout
    if not _cuda_visible():
        proc = _run(SH, data)  # the default is the number of visible GPUs: none here
        assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
            f"no GPU visible to {sys.executable} (GPUS_PER_NODE=0); this script trains on GPUs"]


def test_recipe_batch_divides_for_1_2_and_8_gpus_per_node() -> None:
    from megatron_reflect.train.recipes import get_recipe

    cfg = get_recipe("smollm2-1.7b")
    for world in (1, 2, 8, 16, 64):  # one node of 1, 2, 8 GPUs; 2 and 8 nodes of 8
        assert cfg.num_microbatches(world) == 512 // (4 * world)


def test_sbatch_writes_checkpoints_to_the_shared_run_directory() -> None:
    text = SBATCH.read_text()
    output = re.search(r"^#SBATCH --output=(\S+)$", text, re.M).group(1)
    assert "/" not in output  # needs no directory that may not exist
    assert "GPUS_PER_NODE" not in text.split("srun")[0].replace("# ", "")  # counted on each node, not fixed
    mounts = re.search(r'--container-mounts "([^"]+)"', text).group(1).split(",")
    assert "$RUN_DIR:$RUN_DIR" in mounts  # the trainer's path is the shared one on every node
    assert 'mkdir -p "$RUN_DIR"' in text and "--requeue" in text


def test_gpu_check_without_a_gpu_says_so_in_one_line() -> None:
    if _cuda_visible():
        pytest.skip("a GPU is visible")
    proc = _run(ROOT / "tools" / "gpu_check.sh", {})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"gpu_check: no CUDA device is visible to {sys.executable} (torch.cuda.is_available() is False)"]


def _cuda_visible() -> bool:
    import torch

    return torch.cuda.is_available()
