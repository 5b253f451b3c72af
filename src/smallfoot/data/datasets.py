"""Datasets as in-memory tensors, a registry of loaders, and the built-in sets."""

from __future__ import annotations

import fnmatch
import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from smallfoot.data.cifar import CIFAR_LAYOUT, cifar_dir, load_cifar
from smallfoot.data.idx import find_idx_file, load_idx_pair
from smallfoot.data.stream import (
    StreamDataset,
    checked_pair,
    input_and_label,
    label_of,
    stream_dataset,
)
from smallfoot.errors import ConfigError, DatasetError, UnknownNameError
from smallfoot.references import is_reference, resolve_reference

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"


class LazyInputs:
    """Inputs read on demand that index like an ``(N, ...)`` float32 tensor: ``inputs[i]``,
    ``inputs[a:b]`` or ``inputs[index_tensor]`` read just those items, so a mini-batch
    loader (and its worker processes) reads only its batch and the set need not fit in
    memory. Subclasses give :attr:`item_shape`, ``__len__`` and :meth:`read`."""

    dtype = torch.float32
    item_shape: tuple[int, ...]

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, indices: list[int]) -> torch.Tensor:
        """The items at ``indices`` stacked, ``(len(indices), *item_shape)`` float32."""
        raise NotImplementedError

    def select(self, index: torch.Tensor) -> LazyInputs:
        """The items at ``index`` as another lazy set (nothing is read)."""
        return _SelectedInputs(self, torch.as_tensor(index, dtype=torch.int64).reshape(-1))

    @property
    def shape(self) -> torch.Size:
        """``(N, *item_shape)``."""
        return torch.Size((len(self), *self.item_shape))

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, (int, np.integer)) or (
            isinstance(index, torch.Tensor) and index.dim() == 0
        ):
            return self[torch.tensor([int(index)])][0]
        if isinstance(index, slice):
            index = torch.arange(len(self))[index]
        indices = [int(i) for i in torch.as_tensor(index).reshape(-1)]
        if not indices:
            return torch.empty(0, *self.item_shape)
        return self.read(indices)


class _SelectedInputs(LazyInputs):
    """A subset of another :class:`LazyInputs`, by position."""

    def __init__(self, source: LazyInputs, positions: torch.Tensor):
        self.source, self.positions = source, positions  # int64 (n,): indices into source
        self.item_shape = source.item_shape

    def __len__(self) -> int:
        return len(self.positions)

    def read(self, indices: list[int]) -> torch.Tensor:
        return self.source.read(self.positions[indices].tolist())


class DatasetInputs(LazyInputs):
    """The inputs of a map-style ``torch.utils.data.Dataset`` of ``(input, label)`` items,
    read on demand (each item's label is read too, and dropped)."""

    def __init__(self, dataset, name: str, item_shape: tuple[int, ...]):
        self.dataset, self.name, self.item_shape = dataset, name, item_shape

    def __len__(self) -> int:
        return len(self.dataset)

    def read(self, indices: list[int]) -> torch.Tensor:
        items = []
        for index in indices:
            x = torch.as_tensor(_item(self.dataset, index, self.name)[0], dtype=torch.float32)
            if tuple(x.shape) != self.item_shape:
                raise DatasetError(
                    f"{self.name}: item {index} has shape {tuple(x.shape)}, item 0 "
                    f"{self.item_shape}; every input must have the same shape"
                )
            items.append(x)
        return torch.stack(items)


def _item(dataset, index: int, name: str):
    """Item ``index`` of a map-style dataset, checked to be an ``(input, label)`` pair."""
    return checked_pair(dataset[index], f"{name}: item {index}")


@dataclass
class ArrayDataset:
    """A labelled dataset held in memory.

    Attributes:
        x: float32 inputs, ``(N, C, H, W)`` for images or ``(N, D)`` for tabular data: a
            tensor, or :class:`LazyInputs` read a batch at a time (an image folder, a user's
            dataset with ``in_memory=false``).
        y: int64 class labels ``(N,)`` (float targets ``(N, D)`` for regression sets).
        num_classes: number of classes (0 for regression).
        name: dataset name, e.g. ``"fashion-mnist"``.
        classes: optional class names.
    """

    x: torch.Tensor | LazyInputs
    y: torch.Tensor
    num_classes: int
    name: str
    classes: tuple[str, ...] | None = None

    def __post_init__(self):
        if len(self.x) != len(self.y):
            raise DatasetError(f"{self.name}: {len(self.x)} inputs but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.x)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, without the batch dimension."""
        return tuple(self.x.shape[1:])

    def subset(self, indices) -> ArrayDataset:
        """A new dataset holding copies of the given rows (lazy inputs stay lazy)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        x = self.x.select(index) if isinstance(self.x, LazyInputs) else self.x[index].clone()
        return ArrayDataset(x, self.y[index].clone(), self.num_classes, self.name, self.classes)


@dataclass(frozen=True)
class DatasetInfo:
    """A registered dataset: its name, a one-line description and its loader."""

    name: str
    description: str
    loader: Callable[..., ArrayDataset]
    splits: tuple[str, ...]
    locate: Callable[[Path | None], str] | None = None
    options: tuple[str, ...] = ()
    """the keyword options the loader takes (``--data-opt KEY=VALUE``)"""


_REGISTRY: dict[str, DatasetInfo] = {}


def register_dataset(
    name: str, description: str, splits=("train", "test"), locate=None, options=None
):
    """Decorator registering ``loader(split, root, **options) -> ArrayDataset`` under ``name``.

    ``locate(root) -> str`` (optional) says where the data is found or raises ``DatasetError``;
    ``smallfoot datasets`` uses it. ``options``: the keyword options the loader takes
    (default: its named parameters after ``split`` and ``root``); others are refused.
    """

    def decorate(loader):
        if options is None:
            params = list(inspect.signature(loader).parameters.values())[2:]
            names = tuple(p.name for p in params if p.kind is not p.VAR_KEYWORD)
        else:
            names = tuple(options)
        _REGISTRY[name] = DatasetInfo(name, description, loader, tuple(splits), locate, names)
        return loader

    return decorate


def list_datasets(pattern: str = "*") -> list[DatasetInfo]:
    """Registered datasets whose name matches the glob ``pattern``, sorted by name."""
    return [info for name, info in sorted(_REGISTRY.items()) if fnmatch.fnmatch(name, pattern)]


def get_dataset_info(name: str) -> DatasetInfo:
    """The registry entry of ``name``; raises ``UnknownNameError`` listing the choices."""
    if name not in _REGISTRY:
        raise UnknownNameError("dataset", name, sorted(_REGISTRY))
    return _REGISTRY[name]


def load_dataset(
    name: str, split: str = "train", root: str | Path | None = None, **options
) -> ArrayDataset | StreamDataset:
    """Load ``split`` of dataset ``name`` as an :class:`ArrayDataset` (a user's stream with
    ``in_memory=false``: a :class:`~smallfoot.data.stream.StreamDataset`).

    Image options: ``normalize`` (default True: per-channel standardisation with the training
    split's statistics), ``pad_to`` (zero-pad square images to this side before normalising),
    ``limit`` (keep this many samples, chosen by a seeded shuffle), ``seed``.
    """
    if is_reference(name):
        return load_referenced_dataset(name, split, **options)
    info = get_dataset_info(name)
    if split not in info.splits:
        raise ConfigError(
            f"dataset {name!r} has no split {split!r}; choose one of: {', '.join(info.splits)}"
        )
    unknown = [
        key for key, value in options.items() if key not in info.options and value is not None
    ]
    if unknown:
        valid = ", ".join(o for o in info.options if o not in ("limit", "seed")) or "none"
        raise ConfigError(f"dataset {name!r} has no option {unknown[0]!r}; its options: {valid}")
    return info.loader(split, Path(root) if root is not None else None, **options)


def load_referenced_dataset(
    reference: str,
    split: str,
    *,
    limit: int | None = None,
    seed: int = 0,
    in_memory: bool = True,
    **options,
) -> ArrayDataset | StreamDataset:
    """Split ``split`` (train or test) of a user's dataset: ``reference`` names a function
    (``package.module:function``) called with ``options`` as keyword arguments that returns a
    ``(train, test)`` pair. Each may be an :class:`ArrayDataset`, any map-style
    ``torch.utils.data.Dataset`` or an ``IterableDataset`` of ``(input tensor, integer
    label)`` items. With ``in_memory`` (the default) a dataset is read once into memory (the
    whole split must fit). ``in_memory=false`` reads a map-style dataset's inputs a batch at a
    time (:class:`DatasetInputs`; pair it with ``--workers``), keeping only the labels in
    memory: its ``targets`` attribute when it has one (torchvision's datasets do), else one
    pass over the items; it streams an ``IterableDataset``
    (:class:`~smallfoot.data.stream.StreamDataset`: nothing kept). ``limit`` keeps that many
    samples (seeded choice; of a stream, its first ``limit`` items each epoch)."""
    function = resolve_reference(reference, "--dataset")
    if split not in ("train", "test"):
        raise ConfigError(f"dataset {reference!r} has no split {split!r}; choose train or test")
    in_memory = _check_bool("in_memory", in_memory)
    try:
        pair = function(**options)
    except TypeError as exc:
        raise ConfigError(
            f"--dataset {reference}: {exc}; pass its options as --data-opt KEY=VALUE"
        ) from None
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise ConfigError(
            f"--dataset {reference} returned a {type(pair).__name__}; it must return a "
            "(train, test) pair of datasets"
        )
    data = pair[0 if split == "train" else 1]
    name = f"{reference} ({split})"
    if isinstance(data, torch.utils.data.IterableDataset) and not in_memory:
        return stream_dataset(data, name, limit)
    if not isinstance(data, ArrayDataset):
        data = _materialise(data, name) if in_memory else _wrap(data, name)
    return _limit(data, limit, seed)


def _check_map_style(dataset, name: str) -> None:
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise ConfigError(
            f"--dataset {name}: a {type(dataset).__name__} is not a map-style dataset "
            "(it needs __len__ and __getitem__)"
        )
    if len(dataset) == 0:
        raise DatasetError(f"{name} is empty")


def _labelled(x, labels: list[int], dataset, name: str) -> ArrayDataset:
    """``x`` with ``labels``, the class count from the dataset's ``num_classes`` or
    ``len(classes)`` (torchvision's attribute) when it has one, else the largest label + 1."""
    y = torch.tensor(labels, dtype=torch.int64)
    classes = getattr(dataset, "classes", None)
    num_classes = getattr(dataset, "num_classes", len(classes) if classes else int(y.max()) + 1)
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise DatasetError(
            f"{name}: labels must lie in 0..{num_classes - 1}, got {int(y.min())}..{int(y.max())}"
        )
    names = tuple(str(c) for c in classes) if classes else None
    return ArrayDataset(x, y, num_classes, name, names)


def _materialise(dataset, name: str) -> ArrayDataset:
    """A dataset of ``(input, label)`` items (map-style, or a stream read once in its
    order) read into one :class:`ArrayDataset`."""
    if isinstance(dataset, torch.utils.data.IterableDataset):
        items = iter(dataset)
    else:
        _check_map_style(dataset, name)
        items = (dataset[index] for index in range(len(dataset)))
    inputs, labels = [], []
    for index, item in enumerate(items):
        x, y = input_and_label(item, f"{name}: item {index}")
        if inputs and x.shape != inputs[0].shape:
            raise DatasetError(
                f"{name}: item {index} has shape {tuple(x.shape)}, item 0 {tuple(inputs[0].shape)}; "
                "every input must have the same shape"
            )
        inputs.append(x)
        labels.append(y)
    if not inputs:
        raise DatasetError(f"{name} is empty")
    return _labelled(torch.stack(inputs), labels, dataset, name)


def _wrap(dataset, name: str) -> ArrayDataset:
    """A map-style dataset as an :class:`ArrayDataset` whose inputs are read on demand."""
    _check_map_style(dataset, name)
    x, y = _item(dataset, 0, name)
    first = torch.as_tensor(x, dtype=torch.float32)
    targets = getattr(dataset, "targets", None)
    # torchvision applies target_transform in __getitem__, after .targets: trust .targets only
    # without one, and only when it agrees with the label item 0 returned
    if (
        targets is not None
        and getattr(dataset, "target_transform", None) is None
        and len(targets) == len(dataset)
        and label_of(targets[0], f"{name}: item 0") == label_of(y, f"{name}: item 0")
    ):
        labels = [label_of(t, f"{name}: item {i}") for i, t in enumerate(targets)]
    else:
        labels = [
            label_of(_item(dataset, i, name)[1], f"{name}: item {i}") for i in range(len(dataset))
        ]
    return _labelled(DatasetInputs(dataset, name, tuple(first.shape)), labels, dataset, name)


def _check_int(name: str, value, minimum: int) -> int:
    """``value`` as an int of at least ``minimum``, else ``ConfigError`` naming the option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"data option {name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"data option {name} must be true or false, got {value!r}")
    return value


def _limit(ds: ArrayDataset, limit: int | None, seed: int) -> ArrayDataset:
    if limit is None or limit >= len(ds):
        return ds
    if limit <= 0:
        raise ConfigError(f"limit must be positive, got {limit}")
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:limit]
    return ds.subset(order.sort().values)


def _pad(images: torch.Tensor, pad_to: int | None) -> torch.Tensor:
    if pad_to is None:
        return images
    h, w = images.shape[-2:]
    if pad_to < max(h, w):
        raise ConfigError(f"pad_to={pad_to} is smaller than the images ({h}x{w})")
    top, left = (pad_to - h) // 2, (pad_to - w) // 2
    return torch.nn.functional.pad(images, (left, pad_to - w - left, top, pad_to - h - top))


@functools.lru_cache(maxsize=16)
def _channel_stats(
    name: str, root: Path | None, pad_to: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of the (padded, [0, 1]-scaled) training split."""
    x = _pad(_raw_images(name, "train", root)[0], pad_to)
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))


IMAGE_OPTIONS = ("normalize", "pad_to", "limit", "seed")


def _image_dataset(
    name, split, root, normalize=True, pad_to=None, limit=None, seed=0, classes=None
):
    _check_bool("normalize", normalize)
    if pad_to is not None:
        _check_int("pad_to", pad_to, 1)
    images, labels, num_classes = _raw_images(name, split, root)
    images = _pad(images, pad_to)
    if normalize:
        mean, std = _channel_stats(name, root, pad_to)
        images = (images - mean[:, None, None]) / std[:, None, None]
    return _limit(
        ArrayDataset(images.contiguous(), labels, num_classes, name, classes), limit, seed
    )


def _raw_images(name: str, split: str, root: Path | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Images scaled to [0, 1] as float32 ``(N, C, H, W)``, labels int64, class count."""
    if name in ("fashion-mnist", "mnist"):
        images, labels = load_idx_pair(_mnist_root(name, root), split)
        images, num_classes = images[:, None], 10
    elif name in CIFAR_LAYOUT:
        images, labels, num_classes = load_cifar(name, _cifar_root(name, root), split)
    elif name == "digits":
        images, labels = _digits_split(split)
        return torch.from_numpy(images / 16.0).float(), torch.from_numpy(labels), 10
    else:
        raise AssertionError(name)
    return (
        torch.from_numpy(images.astype(np.float32) / 255.0),
        torch.from_numpy(labels),
        num_classes,
    )


def _mnist_root(name: str, root: Path | None) -> Path:
    if root is None:
        if name == "mnist":
            raise DatasetError(
                "mnist needs --data-root DIR pointing at the IDX files (train-images-idx3-ubyte[.gz], ...)"
            )
        root = FASHION_MNIST_ROOT
    try:
        for split in ("train", "t10k"):
            find_idx_file(root, f"{split}-images-idx3-ubyte")
            find_idx_file(root, f"{split}-labels-idx1-ubyte")
    except FileNotFoundError as missing:
        hint = (
            "install it with `apt-get install dataset-fashion-mnist` (Debian; files land in "
            f"{FASHION_MNIST_ROOT}), or `smallfoot datasets --download fashion-mnist --data-root DIR`"
            if name == "fashion-mnist"
            else "point --data-root at a directory holding the four MNIST IDX files"
        )
        raise DatasetError(f"{name}: {missing} not found; {hint}") from None
    return root


def _cifar_root(name: str, root: Path | None) -> Path:
    archive = "cifar-10-python.tar.gz" if name == "cifar10" else "cifar-100-python.tar.gz"
    how = (
        f"download {CIFAR_URL}{archive}, extract it and pass --data-root DIR "
        f"(or run `smallfoot datasets --download {name} --data-root DIR`)"
    )
    if root is None:
        raise DatasetError(f"{name} needs --data-root: {how}")
    try:
        cifar_dir(name, root)
    except FileNotFoundError:
        raise DatasetError(
            f"{name}: no {CIFAR_LAYOUT[name]['folder']} found under {root}; {how}"
        ) from None
    return root


def _digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits, split 75/25 by a fixed seeded permutation (it ships unsplit)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    cut = int(0.75 * len(order))
    index = order[:cut] if split == "train" else order[cut:]
    return digits.images[index, None].astype(np.float32), digits.target[index].astype(np.int64)


FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def _locate_mnist(name):
    def locate(root):
        return str(_mnist_root(name, root))

    return locate


def _locate_cifar(name):
    def locate(root):
        return str(_cifar_root(name, root))

    return locate


@register_dataset(
    "fashion-mnist",
    "Zalando Fashion-MNIST, 28x28 grey, 10 classes, 60k/10k (Debian package)",
    locate=_locate_mnist("fashion-mnist"),
    options=IMAGE_OPTIONS,
)
def _fashion(split, root, **options):
    return _image_dataset("fashion-mnist", split, root, classes=FASHION_CLASSES, **options)


@register_dataset(
    "mnist",
    "MNIST handwritten digits, 28x28 grey, 10 classes (IDX files in --data-root)",
    locate=_locate_mnist("mnist"),
    options=IMAGE_OPTIONS,
)
def _mnist(split, root, **options):
    return _image_dataset("mnist", split, root, **options)


@register_dataset(
    "digits",
    "scikit-learn digits, 8x8 grey, 10 classes, 1347/450 (ships with scikit-learn)",
    locate=lambda root: "bundled with scikit-learn",
    options=IMAGE_OPTIONS,
)
def _digits(split, root, **options):
    return _image_dataset("digits", split, root, **options)


@register_dataset(
    "cifar10",
    "CIFAR-10, 32x32 colour, 10 classes (python pickles in --data-root)",
    locate=_locate_cifar("cifar10"),
    options=IMAGE_OPTIONS,
)
def _cifar10(split, root, **options):
    return _image_dataset("cifar10", split, root, **options)


@register_dataset(
    "cifar100",
    "CIFAR-100, 32x32 colour, 100 fine classes (python pickles in --data-root)",
    locate=_locate_cifar("cifar100"),
    options=IMAGE_OPTIONS,
)
def _cifar100(split, root, **options):
    return _image_dataset("cifar100", split, root, **options)


@register_dataset(
    "synthetic",
    "seeded Gaussian class prototypes + noise, any shape / class count / size",
    locate=lambda root: "generated in memory",
    options=("shape", "num_classes", "size", "noise", "seed", "limit"),
)
def _synthetic(
    split,
    root,
    shape=(3, 32, 32),
    num_classes=10,
    size=None,
    noise=1.0,
    seed=0,
    normalize=True,
    pad_to=None,
    limit=None,
):
    """Class ``c`` draws ``prototype_c + noise * N(0, 1)``; prototypes are shared by both splits."""
    shape = (shape,) if isinstance(shape, int) else shape
    if not isinstance(shape, (list, tuple)) or not shape:
        raise ConfigError(f"data option shape must be a list of sizes, e.g. 3,32,32, got {shape!r}")
    shape = tuple(_check_int("shape", s, 1) for s in shape)
    _check_int("num_classes", num_classes, 2)
    if size is not None:
        _check_int("size", size, 1)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise < math.inf:
        raise ConfigError(f"data option noise must be a non-negative number, got {noise!r}")
    size = size if size is not None else (1024 if split == "train" else 256)
    prototypes = torch.randn((num_classes, *shape), generator=torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed + (1 if split == "train" else 2))
    y = torch.randint(num_classes, (size,), generator=gen)
    x = prototypes[y] + noise * torch.randn((size, *shape), generator=gen)
    return _limit(ArrayDataset(x, y, num_classes, "synthetic"), limit, seed)
