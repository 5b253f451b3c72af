"""Training: the :class:`Trainer` loop and its callbacks (runs end to end: :mod:`smallfoot.runner`)."""

from smallfoot.train.batchnorm import RecalibrateBatchNorm
from smallfoot.train.rundir import MetricsLog, resume_hint
from smallfoot.train.trainer import Callback, TrainConfig, Trainer, make_optimizer, make_scheduler

__all__ = [
    "Callback",
    "MetricsLog",
    "RecalibrateBatchNorm",
    "TrainConfig",
    "Trainer",
    "make_optimizer",
    "make_scheduler",
    "resume_hint",
]
