"""Re-estimating batch-norm running statistics after training steps that moved the weights far.

Running statistics are an exponential average over recent training batches. When each step
moves the weights a long way (P-BFGS's quasi-Newton steps), that average mixes activations
of weights long gone, and evaluation-mode batch norm no longer matches the network. The cure
is the one ``torch.optim.swa_utils.update_bn`` implements for weight averaging: reset the
statistics and recompute them, as a plain mean, over the training set at the final weights.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import update_bn

from smallfoot.data.loader import BatchLoader
from smallfoot.train.trainer import Callback, Trainer


class RecalibrateBatchNorm(Callback):
    """Trainer callback: after every epoch's training steps, before evaluation, recompute all
    batch-norm running statistics over the training set (no augmentation, no gradients).

    Costs one forward pass over the training set per epoch; does nothing for a model without
    batch norm. ``batch_size``: rows per forward pass (default: the trainer's evaluation batch).
    """

    def __init__(self, batch_size: int | None = None):
        self.batch_size = batch_size

    def on_train_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        """Recompute the statistics at the weights the epoch ended with."""
        model = trainer.model
        if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            return
        loader = BatchLoader(
            trainer.train_set, self.batch_size or trainer.config.eval_batch_size, shuffle=False
        )
        device = next(model.parameters()).device
        update_bn(loader.epoch(epoch), model, device=device)
