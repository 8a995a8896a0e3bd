"""GPU checks: Transformer Engine layers, bf16 and FP8 steps (marked ``gpu``, skipped without CUDA),
and the parts of tools/gpu_check.py that a CPU can check (argument handling, row failure logic and
exit codes, the table, the configs of its runs, the fallback preset, its tokenizer description, the
save + resume row, a subprocess timeout that kills the whole process group).

The same model code runs on CPU in the rest of the suite; here the TE layer spec and FP8
(tensorwise current scaling, as on H100) must give a sane loss that trains.  The longer
throughput / MFU / export checks are in tools/gpu_check.sh.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from megatron_reflect.model import PrecisionConfig, build_gpt_model, get_preset
from megatron_reflect.runtime import ParallelConfig
from megatron_reflect.runtime.launch import run_distributed



def _losses(fp8: str, steps: int) -> list[float]:
    from megatron_reflect.runtime import init_runtime

    init_runtime(ParallelConfig(), seed=3)
    # FP8 GEMMs need dimensions divisible by 16
    cfg = dataclasses.replace(get_preset("tiny"), hidden_size=128, ffn_hidden_size=384, num_attention_heads=4,
                              num_query_groups=2, vocab_size=512, layer_spec="te")
    model = build_gpt_model(cfg, ParallelConfig(), PrecisionConfig(dtype="bf16", fp8=fp8))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    text = torch.randint(0, 64, (4, 129), generator=g).cuda()  # a small alphabet: learnable quickly
    tokens, labels = text[:, :-1], text[:, 1:]
    pos = torch.arange(128, device="cuda").expand(4, 128)
    out = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = model(tokens, pos, None, labels=labels).float().mean()
        loss.backward()
        opt.step()
        out.append(float(loss))
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("fp8", ["none", "tensorwise"])
def test_te_layers_train_in_bf16_and_fp8(fp8: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("transformer_engine.pytorch")
    [losses] = run_distributed(_losses, 1, fp8, 20)
    padded = get_preset("tiny").make_vocab_size_divisible_by * math.ceil(512 / 128)
    assert losses[0] == pytest.approx(math.log(padded), abs=0.3)
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 1.0, losses


def _gpu_check():
    import importlib.util
    import sys
    from pathlib import Path

    if "gpu_check" not in sys.modules:  # registered first: its dataclasses look their module up
        spec = importlib.util.spec_from_file_location("gpu_check", Path(__file__).parents[1] / "tools" / "gpu_check.py")
        sys.modules["gpu_check"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["gpu_check"])
    return sys.modules["gpu_check"]


def test_gpu_check_fails_on_any_failed_or_skipped_row() -> None:
    gc = _gpu_check()
    ok = [gc.Row("device", "ok", "H100 x1"), gc.Row("smollm2-1.7b bf16", "ok", "1 tok/s")]
    no_te = [gc.Row("Transformer Engine", gc.NO_TE, gc.NO_TE_DETAIL)]
    assert gc.exit_code(ok) == 0
    assert gc.exit_code(ok + no_te) == 3  # ok without TE: told apart from both "all ok" and "failed"
    assert gc.exit_code(ok + no_te + [gc.Row("export parity (bf16 -> HF)", "FAILED", "x")]) == 1
    assert gc.exit_code(ok + [gc.Row("export parity (bf16 -> HF)", "SKIPPED", "no bf16 checkpoint")]) == 1
    assert gc.exit_code(ok + [gc.Row("smollm2-1.7b fp8-tensorwise", "FAILED", "out of memory")]) == 1
    assert gc.exit_code([]) == 1 and gc.exit_code(no_te) == 1
    table = gc.render(ok + [gc.Row("export parity (bf16 -> HF)", "SKIPPED", "no bf16 checkpoint")]).splitlines()
    assert table[0] == "device                     | ok      | H100 x1"
    assert table[2] == "export parity (bf16 -> HF) | SKIPPED | no bf16 checkpoint"
    assert gc.is_oom(torch.OutOfMemoryError("CUDA out of memory"))
    assert gc.is_oom(RuntimeError("CUDA error: out of memory"))
    assert not gc.is_oom(ValueError("shape mismatch"))


def test_gpu_check_configs_and_fallback(tmp_path) -> None:
    from megatron_reflect.model import get_preset

    gc = _gpu_check()
    for steps, interval in ((1, 1), (2, 1), (10, 5)):  # --steps 1 used to divide by zero
        cfg = gc.throughput_config("smollm2-1.7b", "none", steps, 2048, 4, 16, 1, tmp_path, save=True)
        cfg.validate(1)
        assert cfg.logging.log_interval == interval and cfg.schedule.train_steps == steps
        assert cfg.checkpoint.save_at_end and not cfg.checkpoint.save_optimizer  # weights only for the export
        assert cfg.precision.dtype == "bf16" and cfg.precision.fusions
        # the recipe's per-GPU shape: micro batch 4, 16 microbatches (the optimizer step amortised)
        assert cfg.schedule.global_batch_size == 64 and cfg.num_microbatches(1) == 16
    assert gc.throughput_config("smollm2-1.7b", "none", 10, 2048, 4, 16, 8, tmp_path).num_microbatches(8) == 16
    off = gc.throughput_config("smollm2-1.7b", "tensorwise", 30, 2048, 2, 16, 1, tmp_path, fusions=False)
    assert off.precision.fp8 == "tensorwise" and not off.precision.fusions and not off.checkpoint.save_at_end
    # "really smaller": at most half the parameters (llama-1.7b-gqa is 1.66 B, not a fallback for 1.71 B)
    assert gc.fallback_preset("smollm2-1.7b") == "smollm2-135m"
    assert get_preset("smollm2-135m").num_parameters() * 2 <= get_preset("smollm2-1.7b").num_parameters()
    assert gc.fallback_preset("tiny") is None
    args = gc.parse_args([])
    assert (args.micro_batch, args.microbatches, args.steps) == (4, 16, 10)
    if not torch.cuda.is_available():
        assert gc.main(["--steps", "1"]) == 2  # no GPU: a clear exit, not a traceback
    for bad in (["--steps", "0"], ["--microbatches", "0"], ["--peak-tflops", "-1"]):
        with pytest.raises(SystemExit):
            gc.main(bad)


def test_gpu_check_ships_a_real_tokenizer_description() -> None:
    """The description export needs (gpu_check once passed only a vocab size, and export raised KeyError)."""
    from pathlib import Path

    from megatron_reflect.convert.export import tokenizer_description

    info = _gpu_check().tokenizer_info()
    desc = tokenizer_description(info, Path("meta.json"))
    assert desc["type"] == "hf" and desc["vocab_size"] == 49152 and desc["eod_id"] == 0
    again = _gpu_check().tokenizer_info(desc["model"])  # --tokenizer-dir: the same files, the same description
    assert again["tokenizer"]["vocab_size"] == 49152 and again["tokenizer"]["model"] == desc["model"]


def test_gpu_check_run_and_export_rows_on_the_cpu(tmp_path) -> None:
    """The plumbing of a throughput run and the export row, with a tiny fp32 model on the CPU."""
    import dataclasses
    import json

    from megatron_reflect.model import PrecisionConfig
    from megatron_reflect.train.mfu import Peak

    gc = _gpu_check()
    info = gc.tokenizer_info()
    cfg = gc.throughput_config("tiny", "none", 2, 32, 2, 2, 1, tmp_path / "run", save=True)
    cfg = dataclasses.replace(cfg, precision=PrecisionConfig(), data=dataclasses.replace(cfg.data, num_workers=0))
    r = gc.throughput(cfg, 49152, info, peak=Peak("test", 1e12, 2e12))
    assert r["tokens_per_s_per_gpu"] > 0 and r["mfu"] == pytest.approx(r["tflops"] * 1e12 / 1e12)
    assert "mfu_fp8_peak" not in r  # a bf16 run: one peak
    assert "MFU" in gc.describe_run(r, 32, 2, 2) and "2 x mbs 2" in gc.describe_run(r, 32, 2, 2)
    assert r["loss"] == pytest.approx(math.log(49152), abs=0.5)  # random tokens over the SmolLM2 vocabulary
    meta = json.loads((r["checkpoint"] / "meta.json").read_text())
    assert meta["optimizer"] is None and meta["tokenizer"] == info["tokenizer"]  # weights only, a real tokenizer
    row = gc.export_parity(r["checkpoint"], tmp_path / "hf", dtype="float32")
    assert row.status == "ok", row
    assert row.detail.startswith("verify: max |logit diff| = ") and "(exit 0)" in row.detail
    assert (tmp_path / "hf" / "tokenizer.json").is_file()


def test_gpu_check_resume_row_on_the_cpu(tmp_path) -> None:
    """Save, load and resume (optimizer state included): the resumed losses equal the straight run's."""
    gc = _gpu_check()
    info = gc.tokenizer_info()
    detail = gc.resume_check(tmp_path, 49152, info, preset="tiny", seq=32, steps=4)
    assert "max |diff| 0.00e+00" in detail and "step_00000002" in detail, detail


def test_gpu_check_timeout_kills_the_process_group(tmp_path) -> None:
    """A timed-out command (torchrun and its workers) leaves nothing running."""
    from pathlib import Path
    import time

    gc = _gpu_check()
    pid_file = tmp_path / "child.pid"
    proc = gc.run_bounded(["bash", "-c", f"sleep 60 & echo $! > {pid_file}; wait"], timeout_s=2)
    assert proc.returncode == 124 and "process group killed" in proc.stderr
    child = int(pid_file.read_text())

    def running(pid: int) -> bool:
        """Alive and not a zombie: a killed child whose parent died waits for PID 1 to reap it, which in
        some containers takes a while or never happens; it runs nothing any more."""
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return False
        return state not in ("Z", "X")

    deadline = time.time() + 5.0
    while running(child) and time.time() < deadline:
        time.sleep(0.05)
    assert not running(child)
