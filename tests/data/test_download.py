import gzip
import hashlib

import pytest

from smallfoot.data import download
from smallfoot.errors import DatasetError, UnknownNameError


def local_remote(tmp_path, content: bytes, digest: str, gunzipped=False):
    source = tmp_path / "source" / "file.gz"
    source.parent.mkdir()
    source.write_bytes(gzip.compress(content) if gunzipped else content)
    return download.RemoteFile(
        source.as_uri(), "file.gz", digest, "gunzipped" if gunzipped else "file"
    )


def test_fetch_verifies_and_places_file(tmp_path):
    content = b"smallfoot" * 100
    remote = local_remote(tmp_path, content, hashlib.sha256(content).hexdigest())
    path = download.fetch_file(remote, tmp_path / "data")
    assert path.read_bytes() == content


def test_fetch_verifies_gunzipped_content(tmp_path):
    content = b"\x00\x00\x08\x01\x00\x00\x00\x02ab"
    remote = local_remote(tmp_path, content, hashlib.sha256(content).hexdigest(), gunzipped=True)
    path = download.fetch_file(remote, tmp_path / "data")
    assert gzip.decompress(path.read_bytes()) == content


def test_checksum_mismatch_leaves_nothing(tmp_path):
    remote = local_remote(tmp_path, b"payload", "0" * 64)
    with pytest.raises(DatasetError, match="SHA-256 mismatch"):
        download.fetch_file(remote, tmp_path / "data")
    assert list((tmp_path / "data").iterdir()) == []


def test_unreachable_url_is_a_dataset_error(tmp_path):
    remote = download.RemoteFile((tmp_path / "missing.gz").as_uri(), "missing.gz", "0" * 64)
    with pytest.raises(DatasetError, match="cannot download"):
        download.fetch_file(remote, tmp_path / "data")


def test_known_datasets_have_sha256():
    for files in download.REMOTE_FILES.values():
        assert all(len(f.sha256) == 64 for f in files)
    with pytest.raises(UnknownNameError):
        download.download_dataset("imagenet", "/tmp")


@pytest.mark.skipif(
    not download.Path("/usr/share/datasets/fashion-mnist").exists(),
    reason="Fashion-MNIST not installed",
)
def test_fashion_mnist_checksums_match_the_local_release():
    root = download.Path("/usr/share/datasets/fashion-mnist")
    for remote in download.REMOTE_FILES["fashion-mnist"]:
        assert download.sha256_of(root / remote.filename, gunzip=True) == remote.sha256
