"""Reader for the IDX format of MNIST and Fashion-MNIST (optionally gzipped), with validation."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from smallfoot.errors import DatasetError

# IDX type code -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/ format spec).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path, expected_ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (``.gz`` or plain) into a numpy array of its declared shape.

    Validates the magic number (two zero bytes, a known type code), the number of
    dimensions and that the payload holds exactly ``prod(dims)`` items; raises
    ``DatasetError`` naming the file and the problem otherwise.
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DatasetError(
            f"{path}: cannot read ({exc}); the file is corrupt, fetch it again"
        ) from None
    if len(raw) < 4:
        raise DatasetError(f"{path}: truncated IDX file ({len(raw)} bytes, header needs 4)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetError(
            f"{path}: not an IDX file (magic bytes {raw[:4].hex()}; expected 0000 + type code + ndim)"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    if expected_ndim is not None and ndim != expected_ndim:
        raise DatasetError(f"{path}: IDX file has {ndim} dimensions, expected {expected_ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected_bytes = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    payload = len(raw) - header
    if payload != expected_bytes:
        kind = "truncated" if payload < expected_bytes else "has trailing bytes"
        raise DatasetError(
            f"{path}: IDX file {kind}: header declares shape {dims} ({expected_bytes} bytes), "
            f"payload has {payload} bytes"
        )
    return (
        np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))
    )


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzipped when ``path`` ends in ``.gz``); used by tests and tools."""
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise DatasetError(
            f"cannot write dtype {array.dtype} as IDX; use uint8, int8, int16, int32, float32 or float64"
        )
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    data = header + array.astype(_IDX_DTYPES[code]).tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def find_idx_file(root: Path, stem: str) -> Path:
    """Return ``root/stem`` or ``root/stem.gz``, whichever exists (plain first)."""
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(root / stem)


def load_idx_pair(root: Path, split: str, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Load the MNIST-style image/label pair of ``split`` ("train" or "t10k" naming) from ``root``.

    Returns ``(images (N, H, W) uint8, labels (N,) int64)`` after checking that the counts
    agree and the labels lie in ``[0, num_classes)``.
    """
    prefix = "train" if split == "train" else "t10k"
    image_path = find_idx_file(root, f"{prefix}-images-idx3-ubyte")
    label_path = find_idx_file(root, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(image_path, expected_ndim=3)
    labels = read_idx(label_path, expected_ndim=1).astype(np.int64)
    if len(images) != len(labels):
        raise DatasetError(
            f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} labels; "
            "the files do not belong together"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(
            f"{label_path}: labels outside [0, {num_classes}): min {labels.min()}, max {labels.max()}"
        )
    return images, labels
