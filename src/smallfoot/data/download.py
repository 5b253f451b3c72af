"""Download code with checksum verification, for users with a network.

Nothing in smallfoot downloads on its own: ``smallfoot datasets --download NAME --data-root DIR``
(or :func:`download_dataset`) does it when asked. Every file is verified with SHA-256 before
it is moved into place; a failed download leaves nothing behind.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from smallfoot.errors import DatasetError, UnknownNameError


@dataclass(frozen=True)
class RemoteFile:
    """A file to fetch: ``url``, the name it gets on disk and its SHA-256.

    ``sha256_of`` says what the digest covers: ``"file"`` (the bytes as downloaded) or
    ``"gunzipped"`` (the content after gzip decompression; Fashion-MNIST's publishers give
    only MD5s of their archives, while the decompressed IDX payload is the same everywhere).
    """

    url: str
    filename: str
    sha256: str
    sha256_of: str = "file"
    extract: bool = False


_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
REMOTE_FILES: dict[str, list[RemoteFile]] = {
    "fashion-mnist": [
        RemoteFile(
            _FASHION + "train-images-idx3-ubyte.gz",
            "train-images-idx3-ubyte.gz",
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "gunzipped",
        ),
        RemoteFile(
            _FASHION + "train-labels-idx1-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "gunzipped",
        ),
        RemoteFile(
            _FASHION + "t10k-images-idx3-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "gunzipped",
        ),
        RemoteFile(
            _FASHION + "t10k-labels-idx1-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            "gunzipped",
        ),
    ],
    "cifar10": [
        RemoteFile(
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "cifar-10-python.tar.gz",
            "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
            extract=True,
        ),
    ],
    "cifar100": [
        RemoteFile(
            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
            "cifar-100-python.tar.gz",
            "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
            extract=True,
        ),
    ],
}


def sha256_of(path: Path, gunzip: bool = False) -> str:
    """Hex SHA-256 of a file's bytes, or of its gzip-decompressed content when ``gunzip``."""
    digest = hashlib.sha256()
    opener = gzip.open if gunzip else open
    with opener(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_file(remote: RemoteFile, root: Path) -> Path:
    """Download ``remote`` into ``root``, verify its SHA-256, extract archives; return the path.

    An existing file that verifies is kept; one that does not is replaced. The download goes
    to a temporary file that is renamed only after verification.
    """
    root.mkdir(parents=True, exist_ok=True)
    target = root / remote.filename
    gunzip = remote.sha256_of == "gunzipped"
    if not (target.exists() and sha256_of(target, gunzip) == remote.sha256):
        fd, tmp_name = tempfile.mkstemp(prefix=f".{remote.filename}.", dir=root)
        tmp = Path(tmp_name)
        try:
            with (
                os.fdopen(fd, "wb") as out,
                urllib.request.urlopen(remote.url, timeout=60) as response,
            ):
                shutil.copyfileobj(response, out)
            actual = sha256_of(tmp, gunzip)
            if actual != remote.sha256:
                raise DatasetError(
                    f"{remote.url}: SHA-256 mismatch (got {actual}, expected {remote.sha256}); "
                    "the download is corrupt or the file changed upstream. Nothing was written."
                )
            os.replace(tmp, target)
        except OSError as exc:
            raise DatasetError(
                f"cannot download {remote.url}: {exc}. Check the network or copy the file to {root}"
            ) from None
        finally:
            tmp.unlink(missing_ok=True)
    if remote.extract:
        with tarfile.open(target) as archive:
            archive.extractall(root, filter="data")
    return target


def download_dataset(name: str, root: str | Path) -> list[Path]:
    """Fetch every file of dataset ``name`` into ``root`` (see :data:`REMOTE_FILES`)."""
    if name not in REMOTE_FILES:
        raise UnknownNameError("downloadable dataset", name, sorted(REMOTE_FILES))
    return [fetch_file(remote, Path(root)) for remote in REMOTE_FILES[name]]
