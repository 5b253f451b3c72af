"""Datasets as in-memory tensors or read on demand: ``load_dataset(name, split, root)``,
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
from smallfoot.data.loader import Augment, BatchLoader, add_label_noise

__all__ = [
    "ArrayDataset",
    "Augment",
    "BatchLoader",
    "DatasetInfo",
    "LazyInputs",
    "add_label_noise",
    "get_dataset_info",
    "list_datasets",
    "load_dataset",
    "register_dataset",
]
