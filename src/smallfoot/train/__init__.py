"""Training: the :class:`Trainer` loop, callbacks, and ``run_training`` (the run directory)."""

from smallfoot.train.batchnorm import RecalibrateBatchNorm
from smallfoot.train.run import load_run_data, resolve_device, run_training, seed_everything
from smallfoot.train.trainer import Callback, TrainConfig, Trainer, make_optimizer, make_scheduler

__all__ = [
    "Callback",
    "RecalibrateBatchNorm",
    "TrainConfig",
    "Trainer",
    "load_run_data",
    "make_optimizer",
    "make_scheduler",
    "resolve_device",
    "run_training",
    "seed_everything",
]
