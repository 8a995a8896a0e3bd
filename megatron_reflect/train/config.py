"""The training run as one typed config: a dataclass per concern, no global args.

``TrainConfig`` gathers the sections (model, parallel, data, optim, schedule, checkpoint,
logging, precision, loss).  Recipes (:mod:`megatron_reflect.train.recipes`) return a
complete one; YAML files and ``section.field=value`` overrides change fields through
:func:`megatron_reflect.config.resolve`.  :meth:`TrainConfig.validate` checks the
cross-section arithmetic (batch sizes vs. world size, schedule lengths) before any
process group exists, so a bad launch fails in milliseconds with the field's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from megatron_reflect.data.dataset import DataConfig
from megatron_reflect.errors import ConfigError
from megatron_reflect.model.presets import ModelConfig
from megatron_reflect.model.provider import PrecisionConfig, check_precision, resolve_layer_spec
from megatron_reflect.runtime.distributed import ParallelConfig
from megatron_reflect.train.step import LossConfig


@dataclass
class OptimConfig:
    """AdamW (decoupled weight decay; none on norms) and global-norm gradient clipping."""

    lr: float = 3e-4
    min_lr: float = 3e-5
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    clip_grad: float = 1.0  # 0 disables clipping


@dataclass
class ScheduleConfig:
    """Steps, batch sizes and the learning-rate shape.

    ``global_batch_size`` = ``micro_batch_size`` x microbatches x data-parallel size;
    microbatches are accumulated (and pipelined when PP > 1).  WSD: linear warmup, a
    constant stage, then a decay over the last ``decay_fraction`` of the steps (SRP's
    schedule); cosine: warmup then a half cosine to ``optim.min_lr``.
    """

    train_steps: int = 100
    micro_batch_size: int = 4
    global_batch_size: int = 8
    lr_schedule: Literal["wsd", "cosine", "constant"] = "wsd"
    warmup_steps: int = 10
    decay_fraction: float = 0.2
    decay_style: Literal["linear", "1-sqrt", "cosine"] = "linear"
    eval_interval: int = 0  # 0: no validation
    eval_iters: int = 2  # global batches per validation
    exit_interval: int = 0  # stop (after saving a checkpoint) when the step is a multiple; 0: never


@dataclass
class CheckpointConfig:
    """Where and how often the full training state is saved; what to start from.

    ``save_dir`` defaults to ``<run_dir>/checkpoints``.  ``resume``: continue from the
    newest complete checkpoint in ``save_dir`` if there is one.  ``load``: initial weights
    only (any TP/PP layout), e.g. a converted or earlier checkpoint; ignored when resuming.
    ``save_optimizer=false`` writes weights, RNG and data position only (a third of the
    bytes with AdamW): such a checkpoint resumes with fresh optimizer moments (logged).
    ``optimizer_reshardable`` (GPU, distributed optimizer): save the optimizer state in
    megatron's ``fully_reshardable`` format, which resumes at another TP/PP layout but
    gathers the whole state on every rank while saving; the default ``dp_reshardable``
    writes each rank's shard as it is (no gather) and resumes at the same TP/PP layout with
    any data-parallel size.
    """

    save_dir: str | None = None
    save_interval: int = 0  # 0: only at the end
    save_at_end: bool = True
    keep_last: int = 2
    resume: bool = True
    load: str | None = None
    save_optimizer: bool = True
    optimizer_reshardable: bool = False


@dataclass
class LoggingConfig:
    log_interval: int = 10
    tensorboard: bool = True
    jsonl: bool = True
    progress_bar: bool = False
    peak_tflops: float = 0.0  # dense BF16 peak of one GPU for MFU; 0: from the device name (train/mfu.py)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data_loader: Literal["torch", "dali"] = "torch"
    seed: int = 1234
    run_dir: str = "runs/default"

    def num_microbatches(self, world_size: int) -> int:
        """Microbatches per step on each data-parallel rank (checked divisibility)."""
        dp = self.parallel.data_parallel_size(world_size)
        per_step = self.schedule.micro_batch_size * dp
        if self.schedule.global_batch_size % per_step:
            raise ConfigError(
                f"schedule.global_batch_size {self.schedule.global_batch_size} is not a multiple of "
                f"schedule.micro_batch_size x data-parallel size = {self.schedule.micro_batch_size} x {dp}")
        return self.schedule.global_batch_size // per_step

    def validate(self, world_size: int = 1) -> None:
        self.model.validate()
        self.model.validate_layout(self.parallel.tensor_model_parallel_size,
                                   self.parallel.pipeline_model_parallel_size)
        # FP8 settings megatron / TE would reject after launch: checked on any machine ...
        check_precision(self.model, self.parallel, self.precision,
                        self.schedule.micro_batch_size * self.data.seq_length)
        # ... then FP8 without TE or a GPU, also before any launch
        resolve_layer_spec(self.model, self.precision)
        self.num_microbatches(world_size)
        s = self.schedule
        if s.train_steps < 1:
            raise ConfigError("schedule.train_steps must be >= 1")
        if s.micro_batch_size < 1:
            raise ConfigError("schedule.micro_batch_size must be >= 1")
        if not 0 <= s.warmup_steps <= s.train_steps:
            raise ConfigError(f"schedule.warmup_steps {s.warmup_steps} must lie in [0, train_steps={s.train_steps}]")
        if not 0.0 <= s.decay_fraction <= 1.0:
            raise ConfigError("schedule.decay_fraction must lie in [0, 1]")
        if self.optim.min_lr > self.optim.lr:
            raise ConfigError(f"optim.min_lr {self.optim.min_lr} exceeds optim.lr {self.optim.lr}")
        if self.data.seq_length > self.model.max_position_embeddings:
            raise ConfigError(f"data.seq_length {self.data.seq_length} exceeds "
                              f"model.max_position_embeddings {self.model.max_position_embeddings}")
        if self.checkpoint.keep_last < 1:
            raise ConfigError("checkpoint.keep_last must be >= 1")
        if self.logging.peak_tflops < 0:
            raise ConfigError(f"logging.peak_tflops {self.logging.peak_tflops} must be >= 0 (0: from the device name)")
        if self.logging.log_interval < 1:
            raise ConfigError(f"logging.log_interval {self.logging.log_interval} must be >= 1")
        intervals = {"checkpoint.save_interval": self.checkpoint.save_interval,
                     "schedule.eval_interval": s.eval_interval, "schedule.exit_interval": s.exit_interval}
        for name, value in intervals.items():
            if value < 0:
                raise ConfigError(f"{name} {value} must be >= 0 (0 turns it off)")
        if self.parallel.virtual_pipeline_model_parallel_size is not None:
            raise ConfigError("parallel.virtual_pipeline_model_parallel_size: the interleaved schedule is not "
                              "supported by this trainer yet; leave it unset")
        if self.loss.reflection_loss_weight < 0:
            raise ConfigError("loss.reflection_loss_weight must be >= 0")
