"""The training loop: ``train(cfg) -> TrainResult``, in one process or under torchrun.

Built from megatron-core parts, without Megatron-LM's global-args loop: GPTModel
(model/provider.py), ``get_forward_backward_func`` for microbatches, gradient
accumulation and the pipeline schedule, the reflection-aware forward step and loss
(train/step.py, the one seam), and per-token loss normalisation over the global batch
(``calculate_per_token_loss``; the schedule hands the token count to the
``finalize_model_grads_func``).  On a GPU the model is wrapped in megatron DDP
(overlapped grad reduce, bf16 via Float16Module) with the distributed optimizer; on the
CPU a torch AdamW with :func:`~megatron_reflect.train.grads.finalize_grads_cpu`.  The
choice is made once, from :func:`~megatron_reflect.runtime.device.use_cuda`; everything
else is one path.

Communication on the GPU is overlapped as far as megatron-core offers it
(:func:`ddp_config`): the gradient reduce-scatter with the backward pass, and the bf16
parameter all-gather of the distributed optimizer with the next step's forward (dispatched
by ``zero_grad`` and waited for by forward pre-hooks, bucket by bucket).  The model's
weights are then stale between ``optimizer.step()`` and the next forward, so evaluation and
checkpoint saves first finish the all-gather (:func:`_synced_params`), as Megatron-LM does.

Per step the loop adds two small all-reduces (loss statistics) and a ``float()`` per
logged value to the schedule's own work; ``benchmarks/bench_trainer.py`` measures that
against a bare megatron-core loop.  ``train`` initialises the runtime when none is up
and tears it down again, so in-process callers can run it many times.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
import yaml

from megatron_reflect.checkpoint import load_model_weights
from megatron_reflect.config import to_dict
from megatron_reflect.errors import ConfigError
from megatron_reflect.model.presets import ModelConfig
from megatron_reflect.model.provider import build_gpt_model
from megatron_reflect.runtime.device import use_cuda
from megatron_reflect.runtime.distributed import Runtime, init_runtime, shutdown_runtime
from megatron_reflect.runtime.faults import kill_point
from megatron_reflect.train.checkpointing import (
    TrainState,
    latest_checkpoint,
    load_training_state,
    save_training_state,
)
from megatron_reflect.train.config import TrainConfig
from megatron_reflect.train.data_loading import build_datasets, dataset_info, microbatches
from megatron_reflect.train.metrics import MetricsWriter, format_line, reduce_reports
from megatron_reflect.train.mfu import Peak, mfu, peak_for
from megatron_reflect.train.optim import MegatronOptimizer, Optimizer, TorchOptimizer, lr_at
from megatron_reflect.train.step import make_forward_step

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run did.  ``losses``: the training loss of every step this call ran."""

    steps: int
    losses: list[float]
    last_checkpoint: Path | None
    metrics_path: Path
    valid: list[dict[str, float]] = field(default_factory=list)  # one entry per validation, with "step"
    final: dict[str, float] = field(default_factory=dict)  # the last step's logged values
    model_config: ModelConfig | None = None


@dataclass
class _Run:
    """Everything a step needs, passed explicitly (no globals)."""

    cfg: TrainConfig
    rt: Runtime
    model_cfg: ModelConfig
    chunks: list[torch.nn.Module]  # what the schedule runs (DDP-wrapped on GPU)
    modules: list[torch.nn.Module]  # the GPTModels inside: their state dicts are the checkpoint's
    optimizer: Optimizer
    num_microbatches: int
    forward_step: Any
    meta: dict[str, Any]
    peak: Peak | None = None  # MFU denominator (GPU only)


def _model_config(cfg: TrainConfig, info: dict[str, Any]) -> ModelConfig:
    vocab = int(info["tokenizer"]["vocab_size"])
    if vocab != cfg.model.vocab_size:
        log.info("model.vocab_size %d -> %d (the dataset's tokenizer)", cfg.model.vocab_size, vocab)
    return dataclasses.replace(cfg.model, vocab_size=vocab)


def ddp_config(cfg: TrainConfig):
    """megatron DDP settings of the GPU path: fp32 (or bf16-on-the-wire) reduce, every overlap on.

    ``overlap_grad_reduce``: each gradient bucket's reduce-scatter starts as soon as the
    last microbatch's backward has filled it.  ``overlap_param_gather``: the distributed
    optimizer's all-gather of the updated bf16 weights runs under the next forward instead
    of after the step.  ``precision.grad_reduce=bf16`` halves the reduce-scatter bytes
    (megatron's ``reduce_scatter_with_fp32_accumulation``) at the price of accumulating
    microbatch gradients in bf16; fp32 is the default.
    """
    from megatron.core.distributed import DistributedDataParallelConfig

    bf16_wire = cfg.precision.grad_reduce == "bf16"
    return DistributedDataParallelConfig(grad_reduce_in_fp32=not bf16_wire,
                                         reduce_scatter_with_fp32_accumulation=bf16_wire,
                                         overlap_grad_reduce=True, overlap_param_gather=True,
                                         use_distributed_optimizer=True, average_in_collective=False)


def _build_model_and_optimizer(cfg: TrainConfig, model_cfg: ModelConfig
                               ) -> tuple[list[torch.nn.Module], list[torch.nn.Module], Optimizer]:
    """(chunks for the schedule, the GPTModels inside them, the optimizer)."""
    on_gpu = use_cuda()
    model = build_gpt_model(model_cfg, cfg.parallel, cfg.precision, main_grads=on_gpu)
    config = model.config
    config.calculate_per_token_loss = True
    if not on_gpu:
        from megatron_reflect.train.grads import finalize_grads_cpu

        config.finalize_model_grads_func = finalize_grads_cpu
        chunks = [model]
        return chunks, chunks, TorchOptimizer(chunks, cfg.optim)
    from megatron.core.distributed import DistributedDataParallel, finalize_model_grads
    from megatron.core.transformer.module import Float16Module

    bf16 = cfg.precision.dtype == "bf16"
    module = Float16Module(config, model) if bf16 else model
    ddp = DistributedDataParallel(config=config, ddp_config=ddp_config(cfg), module=module)
    config.finalize_model_grads_func = finalize_model_grads
    config.no_sync_func = ddp.no_sync
    config.grad_sync_func = ddp.start_grad_sync
    chunks = [ddp]
    return chunks, [model], MegatronOptimizer(chunks, cfg.optim, bf16=bf16, distributed=True)


@contextlib.contextmanager
def _synced_params(run: _Run) -> Iterator[None]:
    """Finish the overlapped parameter all-gather (weights current) for the block; re-arm it after."""
    overlapped = [c for c in run.chunks if getattr(c, "use_forward_hook", False)]
    for chunk in overlapped:
        chunk.disable_forward_pre_hook(param_sync=True)
    try:
        yield
    finally:
        for chunk in overlapped:
            chunk.enable_forward_pre_hook()


def _zero_grad(run: _Run) -> None:
    for chunk in run.chunks:
        if hasattr(chunk, "zero_grad_buffer"):
            chunk.zero_grad_buffer()
    run.optimizer.zero_grad()


def _schedule(run: _Run, data: Iterator[dict[str, torch.Tensor]], forward_only: bool) -> list[dict[str, torch.Tensor]]:
    from megatron.core.pipeline_parallel import get_forward_backward_func

    return get_forward_backward_func()(
        forward_step_func=run.forward_step, data_iterator=data, model=run.chunks,
        num_microbatches=run.num_microbatches, seq_length=run.cfg.data.seq_length,
        micro_batch_size=run.cfg.schedule.micro_batch_size, forward_only=forward_only)


def _evaluate(run: _Run, valid_ds: Any) -> dict[str, float]:
    from megatron.core import parallel_state

    s = run.cfg.schedule
    total = s.eval_iters * s.global_batch_size
    if valid_ds is None or len(valid_ds) < total:
        raise ConfigError(f"validation needs {total} samples (schedule.eval_iters x global_batch_size); "
                          f"the validation split has {0 if valid_ds is None else len(valid_ds)}: raise data.split's "
                          f"validation share or set schedule.eval_interval=0")
    data = microbatches(valid_ds, 0, total, s.micro_batch_size, parallel_state.get_data_parallel_rank(),
                        run.rt.dp_size, loader=run.cfg.data_loader)
    for chunk in run.chunks:
        chunk.eval()
    reports: list[dict[str, torch.Tensor]] = []
    with torch.no_grad(), _synced_params(run):
        for _ in range(s.eval_iters):
            reports += _schedule(run, data, forward_only=True)
    for chunk in run.chunks:
        chunk.train()
    return reduce_reports(reports, run.rt.device)


def _save(run: _Run, state: TrainState) -> Path:
    save_dir = run.cfg.checkpoint.save_dir or str(Path(run.cfg.run_dir) / "checkpoints")
    ck = run.cfg.checkpoint
    with _synced_params(run):  # the weights the optimizer just computed, not the step before's
        return save_training_state(save_dir, run.modules, run.model_cfg, run.optimizer, state, run.rt,
                                   keep_last=ck.keep_last, meta=run.meta, save_optimizer=ck.save_optimizer,
                                   optimizer_reshardable=ck.optimizer_reshardable)


def _restore(run: _Run) -> TrainState:
    ck = run.cfg.checkpoint
    save_dir = ck.save_dir or str(Path(run.cfg.run_dir) / "checkpoints")
    latest = latest_checkpoint(save_dir) if ck.resume else None
    if latest is not None:
        log.info("resuming from %s", latest)
        return load_training_state(latest, run.modules, run.optimizer, run.rt)
    if ck.load:
        log.info("initial weights from %s", ck.load)
        load_model_weights(ck.load, run.modules)
        run.optimizer.reload_model_params()  # fp32 main weights from the loaded ones
    return TrainState()


def _throughput(run: _Run, tokens: int, seconds: float) -> dict[str, float]:
    out = {"tokens_per_s": tokens / max(seconds, 1e-9)}
    if use_cuda():
        flops = run.model_cfg.flops_per_token(run.cfg.data.seq_length) * tokens / max(seconds, 1e-9)
        per_gpu = flops / run.rt.world_size
        out.update(tflops_per_gpu=per_gpu / 1e12, **mfu(per_gpu, run.peak, run.cfg.precision.fp8 != "none"))
    return out


def _train(cfg: TrainConfig, rt: Runtime, datasets: tuple[Any, Any] | None, info: dict[str, Any] | None) -> TrainResult:
    from megatron.core import parallel_state

    if info is None:
        info = dataset_info(cfg.data)
    model_cfg = _model_config(cfg, info)
    s = cfg.schedule
    run_dir = Path(cfg.run_dir)
    if rt.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(dataclasses.replace(cfg, model=model_cfg)),
                                                            sort_keys=False), encoding="utf-8")
    chunks, modules, optimizer = _build_model_and_optimizer(cfg, model_cfg)
    meta = {"tokenizer": info.get("tokenizer"), "reflection_template": info.get("reflection_template")}
    peak = peak_for(torch.cuda.get_device_name(), cfg.logging.peak_tflops) if use_cuda() else None
    run = _Run(cfg, rt, model_cfg, chunks, modules, optimizer, cfg.num_microbatches(rt.world_size),
               make_forward_step(cfg.loss, rt.device), meta, peak)
    state = _restore(run)

    train_samples = s.train_steps * s.global_batch_size
    valid_samples = s.eval_iters * s.global_batch_size if s.eval_interval > 0 else 0
    train_ds, valid_ds = datasets if datasets is not None else build_datasets(cfg.data, train_samples, valid_samples)
    dp_rank = parallel_state.get_data_parallel_rank()
    data = microbatches(train_ds, state.consumed_samples, train_samples, s.micro_batch_size, dp_rank, rt.dp_size,
                        num_workers=cfg.data.num_workers, loader=cfg.data_loader, pin_memory=use_cuda())

    # records of steps after the one this run starts from belong to a run that was killed
    writer = MetricsWriter(run_dir, enabled=rt.is_main, jsonl=cfg.logging.jsonl, tensorboard=cfg.logging.tensorboard,
                           start_step=state.step)
    result = TrainResult(steps=state.step, losses=[], last_checkpoint=None, metrics_path=writer.path,
                         model_config=model_cfg)
    tokens_per_step = s.global_batch_size * cfg.data.seq_length
    progress = None
    if cfg.logging.progress_bar and rt.is_main:
        from tqdm import tqdm

        progress = tqdm(total=s.train_steps, initial=state.step, unit="step")
    interval_start, interval_steps = time.perf_counter(), 0
    last_saved = state.step if state.step > 0 else -1  # a resumed state is already on disk
    try:
        while state.step < s.train_steps:
            lr = lr_at(state.step, cfg.optim, s)
            optimizer.set_lr(lr)
            _zero_grad(run)
            reports = _schedule(run, data, forward_only=False)
            norm = optimizer.step()
            values = reduce_reports(reports, rt.device)
            state.step += 1
            state.consumed_samples += s.global_batch_size
            interval_steps += 1
            result.losses.append(values["loss"])
            if not math.isfinite(values["loss"]):
                raise FloatingPointError(f"step {state.step}: loss is {values['loss']}")
            if state.step % cfg.logging.log_interval == 0 or state.step == s.train_steps:
                elapsed = time.perf_counter() - interval_start
                values.update(lr=lr, grad_norm=norm, **_throughput(run, interval_steps * tokens_per_step, elapsed))
                writer.write(state.step, values)
                result.final = values
                if rt.is_main:
                    log.info(format_line(state.step, s.train_steps, values))
                interval_start, interval_steps = time.perf_counter(), 0
            if s.eval_interval > 0 and (state.step % s.eval_interval == 0 or state.step == s.train_steps):
                valid = _evaluate(run, valid_ds)
                writer.write(state.step, valid, split="valid")
                result.valid.append({"step": float(state.step), **valid})
                if rt.is_main:
                    log.info("validation at step %d: loss %.4f", state.step, valid["loss"])
            kill_point("train_step", state.step)  # crash-safety tests (runtime/faults.py); no-op otherwise
            exiting = s.exit_interval > 0 and state.step % s.exit_interval == 0 and state.step < s.train_steps
            if exiting or (cfg.checkpoint.save_interval > 0 and state.step % cfg.checkpoint.save_interval == 0):
                result.last_checkpoint = _save(run, state)
                last_saved = state.step
            if progress is not None:
                progress.update(1)
            if exiting:
                log.info("exit_interval reached at step %d; rerun to resume", state.step)
                break
        if cfg.checkpoint.save_at_end and last_saved != state.step:
            result.last_checkpoint = _save(run, state)
    finally:
        writer.close()
        if progress is not None:
            progress.close()
        _release(run)
    result.steps = state.step
    return result


def _release(run: _Run) -> None:
    """Break the reference cycles through the model config, so the model's memory is freed.

    ``config.no_sync_func`` / ``grad_sync_func`` are bound methods of the DDP wrapper, which
    holds the model, which holds ``config``: without this, a 1.7B model and its optimizer
    stay allocated after ``train`` returns until the garbage collector finds the cycle.
    """
    for module in run.modules:
        config = getattr(module, "config", None)
        if config is not None:
            config.no_sync_func = None
            config.grad_sync_func = None
            config.param_sync_func = None
            config.finalize_model_grads_func = None
    run.chunks.clear()
    run.modules.clear()


def train(cfg: TrainConfig, *, datasets: tuple[Any, Any] | None = None,
          info: dict[str, Any] | None = None) -> TrainResult:
    """Train (or resume) the run ``cfg`` describes; see the module docstring.

    ``datasets`` (train, valid) and ``info`` (the dataset stats with its ``tokenizer``
    description) replace the datasets built from ``cfg.data``: for callers that hold
    their datasets in memory (benchmarks).  When this call initialises the runtime it also
    shuts it down, so a process may call ``train`` repeatedly.
    """
    from megatron.core import parallel_state

    world_size = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
    cfg.validate(world_size)
    owns_dist = not dist.is_initialized()
    owns_groups = not parallel_state.model_parallel_is_initialized()
    if not owns_groups and (
            parallel_state.get_tensor_model_parallel_world_size() != cfg.parallel.tensor_model_parallel_size
            or parallel_state.get_pipeline_model_parallel_world_size() != cfg.parallel.pipeline_model_parallel_size):
        raise ConfigError("train(): the runtime is already initialised with another TP/PP layout than cfg.parallel")
    rt = init_runtime(cfg.parallel, seed=cfg.seed)
    try:
        return _train(cfg, rt, datasets, info)
    finally:
        if owns_dist:
            shutdown_runtime()
        elif owns_groups:
            parallel_state.destroy_model_parallel()
