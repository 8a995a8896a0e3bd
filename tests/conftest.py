"""Test settings: one CPU thread per process so spawned ranks do not oversubscribe 2 cores, and the CPU
path for every test not marked ``gpu``, on any host.

``MEGATRON_REFLECT_DEVICE=cpu`` (megatron_reflect/runtime/device.py) is set for the whole session, so
the multi-rank tests use gloo and the CPU even where a GPU is visible (on a one-GPU host NCCL with
``set_device(rank)`` would fail); spawned ranks inherit it.  Tests marked ``gpu`` get ``cuda`` instead
while they run (their ranks are spawned then, so they see it), and are skipped without a GPU.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["MEGATRON_REFLECT_DEVICE"] = "cpu"

import pytest  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (and Transformer Engine); skipped without one")
    config.addinivalue_line("markers", "slow: takes more than ~30 s on the 2-core CI machine")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _device_for_test(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """``gpu`` tests compute on CUDA; every other test on the CPU (the session default)."""
    monkeypatch.setenv("MEGATRON_REFLECT_DEVICE", "cuda" if request.node.get_closest_marker("gpu") else "cpu")
