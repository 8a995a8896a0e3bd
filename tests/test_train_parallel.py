"""The trainer under tensor and pipeline parallelism, on a real reflected dataset.

Every run starts from one initial checkpoint written at TP=1/PP=1 (``checkpoint.load``),
so the layouts differ only in how the work is split.  Every layout run also pretends to be
on a GPU host: ``torch.cuda.is_available()`` answers True to megatron_reflect's own code
(torch and megatron still get the truth, or their CUDA probes would fail here); with the
suite's ``MEGATRON_REFLECT_DEVICE=cpu`` every choice must still be gloo and the CPU.  Checked:

* TP=2, PP=2 and DP=2 on 2 ranks, and TP=2xPP=2 and TP=2xDP=2 on 4 ranks, give the TP=1
  losses over 4 AdamW steps with clipping (|diff| < 2e-5: float reduction order only); the
  loss is normalised per token over the global batch, so the DP split does not change it;
* clipping forced to act (``max_norm`` a tenth of the gradient norm) leaves, in every
  layout, the gradients that ``torch.nn.utils.clip_grad_norm_`` leaves at TP=1 (gathered
  back to full tensors), and our TP=1 clipping equals torch's;
* pipeline stages seed their generators differently (Megatron-LM's ``seed + 100 x stage``),
  tensor-parallel ranks of a stage identically;
* (in the process that writes the initial checkpoint) loading is strict: a checkpoint
  missing one tensor fails with that tensor's name; and the GPU optimizer's param groups,
  made by megatron's own grouping with their ``wd_mult``, get the CPU path's weight decay
  (none on norms), where left alone every group would decay;
* a checkpoint saved at TP=1 loads at TP=2 and gives the same logits (|diff| < 1e-5), and
  the final checkpoint of every PP=1 layout (with DP > 1 its writes are spread over the DP
  ranks by megatron's fully-parallel save) loads back with the TP=1 run's outputs;
* a TP=1 training checkpoint (weights + AdamW moments) resumed at TP=2 continues with the
  TP=1 run's losses.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from train_corpus import make_dataset

from megatron_reflect.config import resolve
from megatron_reflect.runtime import ParallelConfig
from megatron_reflect.runtime.launch import run_distributed

STEPS = 4
TOL = 2e-5
CLIP = 0.05  # far below the gradient norm at initialisation (~0.5-1): clipping must act


def _config(prefix: str, run_dir: Path, init: str | None, tp: int = 1, pp: int = 1, extra: list[str] = ()):
    from megatron_reflect.train.recipes import get_recipe

    return resolve(get_recipe("tiny-cpu"), None, [
        f"run_dir={run_dir}", f"data.blend=[{prefix}]", "data.seq_length=64", f"checkpoint.load={init}",
        f"schedule.train_steps={STEPS}", "schedule.micro_batch_size=2", "schedule.global_batch_size=4",
        "schedule.warmup_steps=1", "schedule.eval_interval=0", "checkpoint.save_interval=2",
        "logging.log_interval=1", "logging.tensorboard=false",
        f"parallel.tensor_model_parallel_size={tp}", f"parallel.pipeline_model_parallel_size={pp}", *extra])


def _train(cfg) -> dict:
    from megatron_reflect.train.loop import train

    result = train(cfg)
    return {"losses": result.losses, "grad_norm": result.final["grad_norm"]}


def _clipped_gradients(cfg, init: str, max_norm: float, with_torch_reference: bool) -> dict:
    """One global batch through the trainer's schedule and CPU gradient path, then our clipping.

    Returns the gradient norm before clipping and the clipped gradients as one full (TP=1,
    PP=1) state dict; with ``with_torch_reference`` (TP=1 only) also what
    ``torch.nn.utils.clip_grad_norm_`` makes of the same gradients.
    """
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_reflect.checkpoint import load_model_weights, read_model_config
    from megatron_reflect.model import build_gpt_model
    from megatron_reflect.model.state import gather_full_state_dict
    from megatron_reflect.train.data_loading import build_datasets, microbatches
    from megatron_reflect.train.grads import finalize_grads_cpu
    from megatron_reflect.train.optim import clip_grad_norm
    from megatron_reflect.train.step import make_forward_step

    model = build_gpt_model(read_model_config(init), cfg.parallel)
    load_model_weights(init, [model])
    model.config.calculate_per_token_loss = True
    model.config.finalize_model_grads_func = finalize_grads_cpu
    s = cfg.schedule
    dataset, _ = build_datasets(cfg.data, s.global_batch_size, 0)
    data = microbatches(dataset, 0, s.global_batch_size, s.micro_batch_size,
                        parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size())
    get_forward_backward_func()(
        forward_step_func=make_forward_step(cfg.loss, torch.device("cpu")), data_iterator=data, model=[model],
        num_microbatches=cfg.num_microbatches(torch.distributed.get_world_size()), seq_length=cfg.data.seq_length,
        micro_batch_size=s.micro_batch_size, forward_only=False)
    params = [p for p in model.parameters() if p.grad is not None]
    out: dict = {}
    if with_torch_reference:
        raw = [p.grad.clone() for p in params]
        out["torch_norm"] = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        torch_clipped = [p.grad.clone() for p in params]
        for p, g in zip(params, raw):
            p.grad.copy_(g)
    out["norm"] = clip_grad_norm([model], max_norm)
    if with_torch_reference:
        out["ours_vs_torch"] = max(float((p.grad - t).abs().max()) for p, t in zip(params, torch_clipped))
        for p, t in zip(params, torch_clipped):
            p.grad.copy_(t)  # the reference gradients are torch's
    with torch.no_grad():
        for p in params:
            p.data = p.grad  # gather the gradients as if they were the weights
    out["grads"] = gather_full_state_dict(model)
    return out


def _pretend_gpu_host() -> None:
    """``torch.cuda.is_available()`` is True for callers in megatron_reflect (the device switch included)."""
    import sys

    real = torch.cuda.is_available

    def is_available() -> bool:
        caller = sys._getframe(1).f_globals.get("__name__", "")
        return True if caller.startswith("megatron_reflect") else real()

    torch.cuda.is_available = is_available


def _layout_run(cfg, init: str, with_torch_reference: bool = False) -> dict:
    """On one rank of ``cfg.parallel``'s layout: seeds, forced clipping, then the training run."""
    _pretend_gpu_host()  # MEGATRON_REFLECT_DEVICE=cpu (conftest) must keep every choice on the CPU
    from megatron.core import parallel_state

    from megatron_reflect.runtime import init_runtime

    rt = init_runtime(cfg.parallel, seed=cfg.seed)
    out = {"backend": rt.backend, "device": str(rt.device), "seed": torch.initial_seed(),
           "pp_rank": parallel_state.get_pipeline_model_parallel_rank(),
           "tp_rank": parallel_state.get_tensor_model_parallel_rank()}
    out["clip"] = _clipped_gradients(cfg, init, CLIP, with_torch_reference)
    out.update(_train(cfg))
    if cfg.parallel.pipeline_model_parallel_size == 1:  # its own final checkpoint, loaded back in this layout
        out["final_logits"] = _checkpoint_logits(Path(cfg.run_dir) / "checkpoints" / f"step_{STEPS:08d}", cfg.parallel)
    return out


def _checkpoint_logits(ckpt: Path, parallel: ParallelConfig) -> torch.Tensor:
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from megatron_reflect.checkpoint import load_model_weights, read_model_config
    from megatron_reflect.model import build_gpt_model

    model = build_gpt_model(read_model_config(ckpt), parallel)
    load_model_weights(ckpt, [model])
    tokens = torch.randint(0, 384, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return gather_from_tensor_model_parallel_region(model(tokens, torch.arange(16).expand(2, 16), None))


def _save_init(prefix: str, path: str) -> str:
    """A freshly initialised tiny model with the dataset's vocabulary, saved at TP=1/PP=1."""
    import dataclasses

    from megatron_reflect.checkpoint import save_checkpoint
    from megatron_reflect.data.dataset import read_dataset_info
    from megatron_reflect.model import build_gpt_model, get_preset
    from megatron_reflect.runtime import init_runtime

    init_runtime(ParallelConfig(), seed=5)
    vocab = int(read_dataset_info(prefix)["tokenizer"]["vocab_size"])
    model_cfg = dataclasses.replace(get_preset("tiny"), vocab_size=vocab)
    save_checkpoint(path, [build_gpt_model(model_cfg, ParallelConfig())], model_cfg, meta={"step": 0})
    return path


def _strict_load_error(init: str, broken: str) -> str:
    """Save the model without one tensor, load it back: the error message."""
    import megatron_reflect.checkpoint as ck
    from megatron_reflect.errors import ConversionError
    from megatron_reflect.model import build_gpt_model

    model = build_gpt_model(ck.read_model_config(init), ParallelConfig())
    full = ck.model_sharded_state_dict

    def without_final_norm(chunks):
        state = full(chunks)
        del state["model.decoder.final_layernorm.weight"]
        return state

    ck.model_sharded_state_dict = without_final_norm
    try:
        ck.save_checkpoint(broken, [model], ck.read_model_config(init), meta={"step": 0})
    finally:
        ck.model_sharded_state_dict = full
    try:
        ck.load_model_weights(broken, [build_gpt_model(ck.read_model_config(init), ParallelConfig())])
    except ConversionError as exc:
        return str(exc)
    return "loaded without an error"


def _weight_decay_by_parameter(init: str) -> dict:
    """Effective weight decay of every parameter: CPU groups, megatron's groups with and without ours."""
    from megatron.core.optimizer import OptimizerConfig, _get_param_groups, get_standard_config_overrides

    from megatron_reflect.checkpoint import read_model_config
    from megatron_reflect.model import build_gpt_model
    from megatron_reflect.train.optim import apply_group_hyperparameters, param_groups

    model = build_gpt_model(read_model_config(init), ParallelConfig())
    names = {p: n for n, p in model.named_parameters()}
    config = OptimizerConfig(optimizer="adam", lr=1e-3, weight_decay=0.1)
    groups = _get_param_groups([model], config, get_standard_config_overrides(config))

    def effective(opt_groups) -> dict[str, float]:
        return {names[p]: g["weight_decay"] for g in opt_groups for p in g["params"]}

    # what Adam makes of megatron's groups as they come (the defect): its default for every group
    untouched = effective(torch.optim.AdamW(groups, lr=1e-3, weight_decay=config.weight_decay).param_groups)
    apply_group_hyperparameters(groups, lr=1e-3, weight_decay=0.1)
    return {"cpu": effective(param_groups([model], 0.1)), "megatron": effective(groups), "untouched": untouched,
            "wd_mult": sorted({g["wd_mult"] for g in groups})}


def _init_and_checks(prefix: str, path: str) -> dict:
    init = _save_init(prefix, path)
    return {"init": init, "strict_error": _strict_load_error(init, path + "_broken"),
            "weight_decay": _weight_decay_by_parameter(init)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("train_parallel")
    prefix = make_dataset(root / "data")
    [checks] = run_distributed(_init_and_checks, 1, prefix, str(root / "init"))
    init = checks["init"]
    base_dir = root / "tp1"
    [base] = run_distributed(_layout_run, 1, _config(prefix, base_dir, init), init, True)
    return {"root": root, "prefix": prefix, "init": init, "losses": base["losses"], "grad_norm": base["grad_norm"],
            "base_dir": base_dir, "clip": base["clip"], "checks": checks, "final_logits": base["final_logits"]}


def test_loading_a_checkpoint_missing_a_tensor_names_it(setup) -> None:
    message = setup["checks"]["strict_error"]
    assert "init_broken/dist: checkpoint has no tensor 'model.decoder.final_layernorm.weight'" in message, message


def test_gpu_param_groups_get_the_cpu_weight_decay(setup) -> None:
    wd = setup["checks"]["weight_decay"]
    assert wd["wd_mult"] == [0.0, 1.0]  # megatron's grouping: norms (1-D) and biases at 0
    assert wd["megatron"] == wd["cpu"]  # every parameter, by name
    norms = [n for n in wd["cpu"] if "norm" in n]
    assert norms and all(wd["cpu"][n] == 0.0 for n in norms)
    assert wd["cpu"]["embedding.word_embeddings.weight"] == 0.1
    assert all(v == 0.1 for v in wd["untouched"].values())  # without it: norms decay too


def test_tp1_run_learns(setup) -> None:
    losses = setup["losses"]
    assert setup["grad_norm"] > 0.1  # clipping at 1.0 is in play at this scale
    assert len(losses) == STEPS
    assert losses[0] == pytest.approx(torch.log(torch.tensor(384.0)).item(), abs=0.2)  # near uniform at init
    assert losses[-1] < losses[0] - 0.05, losses


def test_tp1_clipping_equals_torch_clip_grad_norm(setup) -> None:
    clip = setup["clip"]
    assert clip["norm"] == pytest.approx(clip["torch_norm"], rel=1e-6)
    assert CLIP / clip["norm"] < 0.2, clip["norm"]  # the clip coefficient really scales the gradients
    assert clip["ours_vs_torch"] < 1e-9
    clipped_norm = torch.sqrt(sum(g.double().square().sum() for g in clip["grads"].values()))
    assert float(clipped_norm) == pytest.approx(CLIP, rel=1e-5)


@pytest.mark.parametrize("tp,pp,world", [(2, 1, 2), (1, 2, 2), (1, 1, 2), (2, 2, 4), (2, 1, 4)],
                         ids=["tp2", "pp2", "dp2", "tp2xpp2", "tp2xdp2"])
def test_parallel_layout_gives_tp1_losses_and_clipped_gradients(setup, tp: int, pp: int, world: int) -> None:
    # 4 ranks on 2 cores: only the final checkpoint (saving is covered by the 2-rank layouts)
    extra = ["checkpoint.save_interval=0"] if world == 4 else []
    cfg = _config(setup["prefix"], setup["root"] / f"tp{tp}pp{pp}w{world}", setup["init"], tp=tp, pp=pp, extra=extra)
    ranks = run_distributed(_layout_run, world, cfg, setup["init"])
    reference = setup["clip"]
    for got in ranks:  # every rank reports the global loss
        assert (got["backend"], got["device"]) == ("gloo", "cpu")  # CUDA "visible", CPU forced
        losses = got["losses"]
        assert len(losses) == STEPS
        for step, (a, b) in enumerate(zip(setup["losses"], losses)):
            assert abs(a - b) < TOL, (step, setup["losses"], losses)
        # the gradient norm (clipping's input) is the global one: shards summed, copies counted once
        assert got["grad_norm"] == pytest.approx(setup["grad_norm"], rel=1e-4)
        # forced clipping: the same global norm, and the clipped gradients of torch's TP=1 clipping
        assert got["clip"]["norm"] == pytest.approx(reference["torch_norm"], rel=1e-5)
        grads = got["clip"]["grads"]
        assert sorted(grads) == sorted(reference["grads"])
        for name, want in reference["grads"].items():
            diff = float((grads[name] - want).abs().max())
            assert diff <= 1e-5 * float(want.abs().max()) + 1e-12, (name, diff)
        if pp == 1:  # the checkpoint this layout saved (DP > 1: spread over the DP ranks) loads with TP=1's outputs
            diff = float((got["final_logits"] - setup["final_logits"]).abs().max())
            assert diff < 1e-4, diff
    # seeds: stage p uses seed + 100 p; the TP ranks of a stage share it
    seeds = {(r["pp_rank"], r["tp_rank"]): r["seed"] for r in ranks}
    for (pp_rank, _), seed in seeds.items():
        assert seed == cfg.seed + 100 * pp_rank


def _logits(ckpts: list[str], tp: int, tokens: torch.Tensor) -> list[torch.Tensor]:
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from megatron_reflect.checkpoint import load_model_weights, read_model_config
    from megatron_reflect.model import build_gpt_model
    from megatron_reflect.runtime import init_runtime

    parallel = ParallelConfig(tensor_model_parallel_size=tp)
    init_runtime(parallel, seed=99)  # a different seed: every weight must come from the checkpoint
    assert parallel_state.get_tensor_model_parallel_world_size() == tp
    out = []
    for ckpt in ckpts:
        model = build_gpt_model(read_model_config(ckpt), parallel)
        load_model_weights(ckpt, [model])
        with torch.no_grad():
            logits = model(tokens, torch.arange(tokens.shape[1]).expand_as(tokens), None)
            out.append(gather_from_tensor_model_parallel_region(logits))
    return out


def test_tp1_checkpoint_loads_at_tp2_with_identical_outputs(setup) -> None:
    ckpt = str(setup["base_dir"] / "checkpoints" / f"step_{STEPS:08d}")
    tokens = torch.randint(0, 384, (2, 16), generator=torch.Generator().manual_seed(3))
    [[tp1, init]] = run_distributed(_logits, 1, [ckpt, setup["init"]], 1, tokens)
    tp2 = run_distributed(_logits, 2, [ckpt], 2, tokens)
    assert tp1.shape == (2, 16, 384)
    for [other] in tp2:
        assert torch.allclose(other, tp1, atol=1e-5), float((other - tp1).abs().max())
    # the trained weights are not the initial ones: outputs differ from the initial checkpoint's
    assert float((init - tp1).abs().max()) > 1e-2


def test_tp1_training_checkpoint_resumes_at_tp2(setup) -> None:
    """Weights and AdamW moments saved at TP=1 step 2, resumed at TP=2: steps 3-4 match."""
    run_dir = setup["root"] / "resume_tp2"
    saved = setup["base_dir"] / "checkpoints" / f"step_{2:08d}"
    shutil.copytree(saved, run_dir / "checkpoints" / saved.name)
    cfg = _config(setup["prefix"], run_dir, None, tp=2)
    ranks = run_distributed(_train, 2, cfg)
    for got in ranks:
        losses = got["losses"]
        assert len(losses) == STEPS - 2
        for a, b in zip(setup["losses"][2:], losses):
            assert abs(a - b) < TOL, (setup["losses"], losses)
