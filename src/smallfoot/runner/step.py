"""The meter on a method's configured training step (model, input shape, batch, method,
optimizer): what ``smallfoot memory --method`` and the benchmarks show."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from smallfoot.config import RunConfig
from smallfoot.data import ArrayDataset, StreamDataset, load_dataset
from smallfoot.errors import ConfigError, ShapeError
from smallfoot.memory.meter import MemoryReport
from smallfoot.methods import RunContext, get_method


def method_step_memory(
    model: str,
    input_shape: tuple[int, ...],
    batch: int,
    *,
    method: str = "baseline",
    method_options: dict[str, Any] | None = None,
    model_options: dict[str, Any] | None = None,
    optimizer: str = "sgd",
    classes: int = 10,
    fake: bool = False,
    seed: int = 0,
    streamed: bool = False,
) -> MemoryReport:
    """Memory of one training step of ``model`` built by ``method`` (its model, loss and
    optimizer, as ``smallfoot train`` would build them) on a random batch of ``batch`` inputs
    of ``input_shape`` (C, H, W) or (D,) with ``classes`` classes. ``fake`` builds everything
    under a ``FakeTensorMode`` and estimates (nothing is allocated, any size works);
    otherwise the step is measured for real. ``streamed``: the training set is a stream (read
    in order, each batch whole), which methods that need random access refuse."""

    if batch < 1:
        raise ConfigError(f"--batch-size must be a positive integer, got {batch}")
    if classes < 2:
        raise ConfigError(f"--classes must be at least 2, got {classes}")
    if not input_shape or any(s < 1 for s in input_shape):
        raise ShapeError(f"input shape {input_shape} must be CxHxW or D with positive sizes")
    config = RunConfig(
        model=model,
        method=method,
        batch_size=batch,
        optimizer=optimizer,
        seed=seed,
        model_options=dict(model_options or {}),
        method_options=dict(method_options or {}),
    ).validate()
    runner = get_method(method, config.method_options)
    sample = synthetic_sample(input_shape, classes, streamed=streamed)
    ctx = RunContext(config, runner.options, sample, sample)
    report = runner.step_memory(ctx, fake=fake)
    report.model = runner.model_name(ctx)
    return report


class DatasetInput(NamedTuple):
    """What a step's memory depends on in a dataset: one input's shape, the number of
    classes, and whether it is a stream (read in order, each batch whole)."""

    input_shape: tuple[int, ...]
    classes: int
    streamed: bool


def dataset_input(
    name: str, root: str | None = None, options: dict[str, Any] | None = None
) -> DatasetInput:
    """The :class:`DatasetInput` of dataset ``name`` as training sees it (data options such
    as ``pad_to`` applied), read from its test split."""

    data = load_dataset(name, "test", root, **dict(options or {}))
    if data.num_classes < 2:
        raise ConfigError(
            f"dataset {name!r} is not a classification set ({data.num_classes} classes); "
            "give --input and --classes"
        )
    return DatasetInput(data.input_shape, data.num_classes, isinstance(data, StreamDataset))


class _OneZeroSample(torch.utils.data.IterableDataset):
    def __init__(self, input_shape: tuple[int, ...]):
        self.input_shape = input_shape

    def __iter__(self):
        yield torch.zeros(self.input_shape), 0


def synthetic_sample(
    input_shape: tuple[int, ...], classes: int, *, streamed: bool = False
) -> ArrayDataset | StreamDataset:
    """A one-sample training set of zeros of ``input_shape`` with ``classes`` classes (the
    stand-in when only shapes matter); with ``streamed`` a :class:`StreamDataset`, so methods
    see a stream as they would in training."""
    if streamed:
        source = _OneZeroSample(tuple(input_shape))
        return StreamDataset(source, "synthetic stream", tuple(input_shape), classes, 1)
    return ArrayDataset(
        torch.zeros(1, *input_shape), torch.zeros(1, dtype=torch.long), classes, "synthetic"
    )
