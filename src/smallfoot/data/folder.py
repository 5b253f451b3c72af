"""A dataset from a folder of images, one sub-folder per class (the layout torchvision's
``ImageFolder`` reads), without torchvision: Pillow decodes, torch does the rest.

``ROOT/train/<class>/<image>`` and ``ROOT/test/<class>/<image>``; classes are the sub-folder
names of ``train`` in sorted order. Images are read on demand, one mini-batch at a time
(:class:`ImageFiles`), so the set need not fit in memory; ``in_memory=True`` decodes it once.
"""

from __future__ import annotations

from pathlib import Path

import torch

from smallfoot.data.datasets import (
    ArrayDataset,
    LazyInputs,
    _check_bool,
    _check_int,
    _limit,
    register_dataset,
)
from smallfoot.errors import ConfigError, DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
"""File suffixes read as images (case-insensitive); any other file in a class folder is refused."""

STATISTICS_SAMPLE = 1000
"""Training images (a seeded choice) whose pixels give the normalisation mean and std."""


def _open(path: Path, channels: int, size: int) -> torch.Tensor:
    """One image as float32 ``(channels, size, size)`` in [0, 1]: decoded by Pillow, converted
    to grey (1 channel) or RGB (3), resized with bilinear filtering. A file Pillow cannot
    decode raises ``DatasetError`` naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BILINEAR)
            data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DatasetError(
            f"{path}: cannot read the image ({exc}); fix or remove the file"
        ) from None
    return data.view(size, size, channels).permute(2, 0, 1).float().div_(255)


class ImageFiles(LazyInputs):
    """Image files that index like an ``(N, C, H, W)`` float32 tensor: ``files[i]``,
    ``files[a:b]`` or ``files[index_tensor]`` decode just those images (normalised with
    ``mean`` and ``std`` per channel), so a mini-batch loader reads only its batch."""

    def __init__(self, paths: list[Path], channels: int, size: int, mean=None, std=None):
        self.paths, self.channels, self.size = paths, channels, size
        self.item_shape = (channels, size, size)
        self.mean = None if mean is None else torch.as_tensor(mean).view(-1, 1, 1)
        self.std = None if std is None else torch.as_tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, indices: list[int]) -> torch.Tensor:
        """The images at ``indices``, decoded and normalised, ``(len(indices), C, H, W)``."""
        batch = torch.stack([_open(self.paths[i], self.channels, self.size) for i in indices])
        if self.mean is not None:
            batch = (batch - self.mean) / self.std
        return batch


def scan(
    split_dir: Path, classes: list[str] | None = None
) -> tuple[list[Path], list[int], list[str]]:
    """The image files of ``split_dir/<class>/`` with their class indices and the class names
    (sorted sub-folder names, or ``classes`` for a test split that must match training).
    A missing folder, an empty class folder or a file that is not an image raises
    ``DatasetError`` naming it."""
    if not split_dir.is_dir():
        raise DatasetError(
            f"{split_dir} is not a directory; an image folder needs train/ and test/"
        )
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not found:
        raise DatasetError(
            f"{split_dir} has no class sub-folders (expected {split_dir}/<class>/<image>)"
        )
    if classes is not None and found != classes:
        raise DatasetError(
            f"{split_dir} has classes {found} but train/ has {classes}; both splits need the same "
            "class folders"
        )
    paths, labels = [], []
    for label, name in enumerate(found):
        files = sorted(p for p in (split_dir / name).iterdir() if not p.name.startswith("."))
        if not files:
            raise DatasetError(
                f"{split_dir / name} is an empty class folder; add images or remove it"
            )
        for path in files:
            if path.is_dir() or path.suffix.lower() not in IMAGE_SUFFIXES:
                raise DatasetError(
                    f"{path} is not an image ({', '.join(IMAGE_SUFFIXES)}); move it out of the "
                    "class folder"
                )
            paths.append(path)
            labels.append(label)
    return paths, labels, found


def load_image_folder(
    root: Path,
    split: str,
    *,
    size: int,
    channels: int = 3,
    normalize: bool = True,
    in_memory: bool = False,
) -> ArrayDataset:
    """Split ``split`` of the image folder at ``root`` as an :class:`ArrayDataset` whose ``x``
    is :class:`ImageFiles` (read on demand) or, with ``in_memory``, one decoded tensor.
    Images become ``channels`` x ``size`` x ``size`` in [0, 1], then, with ``normalize``,
    standardised per channel with the mean and std of up to :data:`STATISTICS_SAMPLE`
    training images (the same statistics for both splits)."""
    train_paths, _, classes = scan(root / "train")
    paths, labels, _ = scan(root / "train") if split == "train" else scan(root / split, classes)
    mean = std = None
    if normalize:
        generator = torch.Generator().manual_seed(0)
        sample = torch.randperm(len(train_paths), generator=generator)[:STATISTICS_SAMPLE]
        pixels = ImageFiles(train_paths, channels, size)[sample]
        mean = pixels.mean(dim=(0, 2, 3))
        std = pixels.std(dim=(0, 2, 3)).clamp_min(1e-6)
    files = ImageFiles(paths, channels, size, mean, std)
    x = files[:] if in_memory else files
    return ArrayDataset(
        x, torch.tensor(labels, dtype=torch.int64), len(classes), "image-folder", tuple(classes)
    )


def _locate(root) -> str:
    if root is None:
        raise DatasetError(
            "image-folder needs --data-root DIR holding train/<class>/ and test/<class>/"
        )
    if not (Path(root) / "train").is_dir():
        raise DatasetError(f"{root} has no train/ folder (expected {root}/train/<class>/<image>)")
    return str(root)


@register_dataset(
    "image-folder",
    "your images: --data-root DIR with train/<class>/*.png and test/<class>/*.png (Pillow; "
    "--data-opt size=32 channels=3)",
    locate=_locate,
)
def _image_folder(
    split, root, size=32, channels=3, normalize=True, in_memory=False, limit=None, seed=0
):
    _locate(root)
    size = _check_int("size", size, 1)
    if channels not in (1, 3):
        raise ConfigError(f"data option channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    data = load_image_folder(
        Path(root), split, size=size, channels=channels,
        normalize=_check_bool("normalize", normalize), in_memory=_check_bool("in_memory", in_memory),
    )  # fmt: skip
    return _limit(data, limit, seed)
