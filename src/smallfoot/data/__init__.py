"""Datasets as in-memory tensors, read on demand or streamed: ``load_dataset(name, split, root)``,
loaders and a registry."""

from smallfoot.data import (
    folder,  # noqa: F401  registers image-folder
    toy,  # noqa: F401  registers sine, two-spirals, checkerboard
)
from smallfoot.data.datasets import (
    ArrayDataset,
    DatasetInfo,
    LazyInputs,
    get_dataset_info,
    list_datasets,
    load_dataset,
    register_dataset,
)
from smallfoot.data.loader import Augment, BatchLoader, add_label_noise, ordered_loader
from smallfoot.data.stream import StreamDataset, StreamLoader

__all__ = [
    "ArrayDataset",
    "Augment",
    "BatchLoader",
    "DatasetInfo",
    "LazyInputs",
    "StreamDataset",
    "StreamLoader",
    "add_label_noise",
    "get_dataset_info",
    "list_datasets",
    "load_dataset",
    "ordered_loader",
    "register_dataset",
]
