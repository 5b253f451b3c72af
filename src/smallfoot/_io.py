"""Atomic file writes (a temporary name in the same directory, then rename) and torch files
with a SHA-256 checksum beside them, verified on load."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from smallfoot.errors import ConfigError


def _atomic(path: str | os.PathLike, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see either the old or the new file, never half."""
    return _atomic(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically (a crash mid-write keeps the old file)."""
    return _atomic(path, lambda handle: torch.save(obj, handle))


def checksum_path(path: str | os.PathLike) -> Path:
    """Where the SHA-256 of ``path`` is kept: ``<path>.sha256`` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def save_checked(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically and its SHA-256 to ``<path>.sha256``, so
    :func:`load_checked` can tell a corrupt file from a good one."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    atomic_write_text(checksum_path(path), hashlib.sha256(data).hexdigest() + "\n")
    return Path(path)


def load_checked(
    path: str | os.PathLike, what: str, map_location: Any = "cpu", require_checksum: bool = True
) -> Any:
    """Load a torch file written by :func:`save_checked` (or, unless ``require_checksum``, a
    plain ``torch.save`` file); a missing, empty, truncated, corrupt or tampered file raises
    a one-line ``ConfigError`` naming ``what`` (e.g. ``"checkpoint"``) and the file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory; give the file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} not found") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    if not data:
        raise ConfigError(f"{what} {path} is empty (a crash or a full disk while writing it?)")
    sidecar = checksum_path(path)
    if sidecar.exists():
        expected = sidecar.read_text().strip()
        if hashlib.sha256(data).hexdigest() != expected:
            raise ConfigError(
                f"{what} {path} does not match its checksum in {sidecar.name}: the file is "
                "corrupt; it cannot be used"
            )
    elif require_checksum:
        raise ConfigError(
            f"{what} {path} has no checksum file {sidecar.name}, so it cannot be verified"
        )
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
    except Exception as exc:  # unpickling a damaged file can raise almost anything
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"{what} {path} is not a readable torch file (truncated or corrupt: {reason})"
        ) from None
