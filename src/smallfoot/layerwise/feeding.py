"""Feeding a unit its inputs: a frozen feednet, or features checkpointed in RAM or on disk
(thesis section 6.2.2).

A :class:`Subnet` is what one layer-wise step trains: ``feed -> input dropout -> segment ->
backward dropout -> decision``. The feed (the already trained prefix) runs in eval mode under
``torch.no_grad()``, so it keeps no activations, gradients or optimizer state.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from smallfoot.data import ArrayDataset, BatchLoader
from smallfoot.errors import ConfigError
from smallfoot.layerwise.dropout import BackwardDropout, InputDropout


class Subnet(nn.Module):
    """The temporary network of one layer-wise step: frozen feed, trained segment + decision block."""

    def __init__(
        self,
        feed: nn.Module,
        segment: nn.Module,
        decision: nn.Module,
        input_dropout: InputDropout | None = None,
        backward_dropout: BackwardDropout | None = None,
    ):
        super().__init__()
        self.feed = feed
        self.input_dropout = input_dropout if input_dropout is not None else InputDropout(0.0)
        self.segment = segment
        self.backward_dropout = (
            backward_dropout if backward_dropout is not None else BackwardDropout(0.0)
        )
        self.decision = decision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, classes)`` of a raw (or checkpointed) input batch ``x``."""
        with torch.no_grad():
            z = self.feed(x)
        z = self.segment(self.input_dropout(z))
        return self.decision(self.backward_dropout(z))

    def train(self, mode: bool = True) -> Subnet:
        """Set the trained parts to ``mode``; the feed always stays in eval mode."""
        super().train(mode)
        self.feed.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters of the segment and the decision block (never the feed's)."""
        return [*self.segment.parameters(), *self.decision.parameters()]


@torch.no_grad()
def output_shape(module: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of one sample after ``module`` (run in eval mode on two zero samples)."""
    was_training = module.training
    module.eval()
    parameter = next(module.parameters(), None)
    dtype = parameter.dtype if parameter is not None else torch.float32
    device = parameter.device if parameter is not None else "cpu"
    out = module(torch.zeros(2, *input_shape, dtype=dtype, device=device))
    module.train(was_training)
    return tuple(out.shape[1:])


class FeatureStore:
    """Feature checkpoints: ``feed``'s outputs for every sample of a dataset, in RAM or on disk.

    ``record`` returns an :class:`ArrayDataset` of features in sample order, so a
    :class:`BatchLoader` with the same seed replays, batch for batch, what the feednet would
    have produced from the raw batches of that epoch. On disk the features live in a
    ``numpy.memmap`` and only the rows of each batch are read. Augmentation cannot be replayed: a checkpoint holds
    one fixed view of the data.
    """

    def __init__(self, storage: str = "ram", directory: str | Path | None = None):
        if storage not in ("ram", "disk"):
            raise ConfigError(f"feature storage {storage!r} is not one of: ram, disk")
        self.storage = storage
        self.directory = Path(directory) if directory is not None else None
        self._tempdir: tempfile.TemporaryDirectory | None = None
        self._count = 0
        self._files: dict[str, Path] = {}

    def _path(self, key: str) -> Path:
        if self.directory is None:
            self._tempdir = self._tempdir or tempfile.TemporaryDirectory(prefix="smallfoot-")
            self.directory = Path(self._tempdir.name)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._count += 1
        return self.directory / f"features-{key}-{self._count}.f32"

    @torch.no_grad()
    def record(
        self, feed: nn.Module, dataset: ArrayDataset, key: str = "train", batch_size: int = 512
    ) -> ArrayDataset:
        """``feed(x)`` of every sample of ``dataset`` (eval mode), as a dataset with its labels.

        On disk, the file of an earlier record under the same ``key`` is deleted: a new
        checkpoint of the train (or test) split replaces the previous one.
        """
        feed.eval()
        shape = output_shape(feed, dataset.input_shape)
        n = len(dataset)
        if self.storage == "ram":
            features = torch.empty((n, *shape), dtype=torch.float32)
        else:
            if key in self._files:
                self._files.pop(key).unlink(missing_ok=True)
            self._files[key] = self._path(key)
            array = np.memmap(self._files[key], dtype=np.float32, mode="w+", shape=(n, *shape))
            features = torch.from_numpy(array)
        parameter = next(feed.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        start = 0
        for x, _ in BatchLoader(dataset, batch_size, shuffle=False).epoch(0):
            out = feed(x.to(device))  # (B, *shape)
            features[start : start + len(out)] = out.float().cpu()
            start += len(out)
        return ArrayDataset(
            features, dataset.y.clone(), dataset.num_classes, dataset.name, dataset.classes
        )

    def close(self) -> None:
        """Delete the feature files this store wrote."""
        for path in self._files.values():
            path.unlink(missing_ok=True)
        self._files = {}
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None
