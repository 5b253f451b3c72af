import gzip

import numpy as np
import pytest

from smallfoot.data.idx import load_idx_pair, read_idx, write_idx
from smallfoot.errors import DatasetError


def write_pair(root, n_images=5, n_labels=5, gz=True):
    suffix = ".gz" if gz else ""
    rng = np.random.default_rng(0)
    write_idx(
        root / f"train-images-idx3-ubyte{suffix}",
        rng.integers(0, 255, (n_images, 28, 28), dtype=np.uint8),
    )
    write_idx(
        root / f"train-labels-idx1-ubyte{suffix}", rng.integers(0, 10, n_labels).astype(np.uint8)
    )


@pytest.mark.parametrize("gz", [True, False])
def test_round_trip(tmp_path, gz):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / ("a.idx.gz" if gz else "a.idx"), array)
    np.testing.assert_array_equal(read_idx(path, expected_ndim=3), array)


def test_float_and_int_types(tmp_path):
    for dtype in (np.int16, np.int32, np.float32, np.float64):
        array = np.arange(6, dtype=dtype).reshape(2, 3)
        back = read_idx(write_idx(tmp_path / "x.idx", array))
        assert back.dtype == dtype
        np.testing.assert_array_equal(back, array)


def test_pair_loads_and_checks_counts(tmp_path):
    write_pair(tmp_path)
    images, labels = load_idx_pair(tmp_path, "train")
    assert images.shape == (5, 28, 28) and labels.dtype == np.int64
    write_pair(tmp_path, n_images=5, n_labels=4)
    with pytest.raises(DatasetError, match="5 images but .* 4 labels"):
        load_idx_pair(tmp_path, "train")


def test_wrong_magic(tmp_path):
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(DatasetError, match="not an IDX file"):
        read_idx(path)


def test_unknown_type_code(tmp_path):
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x00\x00\x07\x01\x00\x00\x00\x01\x00")
    with pytest.raises(DatasetError, match="not an IDX file"):
        read_idx(path)


def test_truncated_payload(tmp_path):
    path = write_idx(tmp_path / "t.idx", np.zeros((4, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(path)


def test_trailing_bytes(tmp_path):
    path = write_idx(tmp_path / "t.idx", np.zeros((4,), dtype=np.uint8))
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(DatasetError, match="trailing"):
        read_idx(path)


def test_wrong_ndim(tmp_path):
    path = write_idx(tmp_path / "t.idx", np.zeros((4, 2), dtype=np.uint8))
    with pytest.raises(DatasetError, match="2 dimensions, expected 3"):
        read_idx(path, expected_ndim=3)


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "t.idx.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05" + b"\x00" * 5)[:-6])
    with pytest.raises(DatasetError, match="t.idx.gz"):
        read_idx(path)


def test_labels_out_of_range(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([1, 12], dtype=np.uint8))
    with pytest.raises(DatasetError, match="labels outside"):
        load_idx_pair(tmp_path, "train")
