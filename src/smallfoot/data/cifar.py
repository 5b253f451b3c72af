"""Reader for the CIFAR-10/100 python-pickle release (a directory the user points to)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from smallfoot.errors import DatasetError

CIFAR_LAYOUT = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "label_key": "labels",
        "num_classes": 10,
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "label_key": "fine_labels",
        "num_classes": 100,
    },
}


def cifar_dir(name: str, root: Path) -> Path:
    """The directory holding the batch files: ``root`` itself or ``root/<release folder>``."""
    layout = CIFAR_LAYOUT[name]
    for candidate in (root / layout["folder"], root):
        if (candidate / layout["test"][0]).exists():
            return candidate
    raise FileNotFoundError(root / layout["folder"])


def _read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found; the CIFAR directory is incomplete") from None
    except (pickle.UnpicklingError, EOFError, ValueError, OSError) as exc:
        raise DatasetError(
            f"{path}: not a readable CIFAR pickle ({exc}); download the release again"
        ) from None
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: expected a pickled dict, found {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    for key in ("data", label_key):
        if key not in batch:
            raise DatasetError(f"{path}: missing key {key!r} (keys: {sorted(batch)})")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise DatasetError(
            f"{path}: 'data' has shape {data.shape} dtype {data.dtype}, expected (N, 3072) uint8"
        )
    if len(labels) != len(data):
        raise DatasetError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar(name: str, root: Path, split: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Load ``split`` of ``cifar10``/``cifar100`` from ``root``.

    Returns ``(images (N, 3, 32, 32) uint8, labels (N,) int64, num_classes)``.
    """
    layout = CIFAR_LAYOUT[name]
    folder = cifar_dir(name, root)
    parts = [_read_batch(folder / f, layout["label_key"]) for f in layout[split]]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if labels.min() < 0 or labels.max() >= layout["num_classes"]:
        raise DatasetError(f"{folder}: labels outside [0, {layout['num_classes']})")
    return images, labels, layout["num_classes"]
