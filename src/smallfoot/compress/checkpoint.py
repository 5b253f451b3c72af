"""Compressed model files: a run's trained model as entropy-coded packages (thesis chapter 3).

``compress_run(run_dir)`` writes ``run_dir/model.sfq`` from the run's ``checkpoint.pt``;
``decompress(path)`` returns the state dict (every floating-point tensor at its bin centres,
other tensors exact). The file carries the run's configuration, so ``test_accuracy`` can
rebuild and evaluate the restored model without the run directory::

    magic b"SFC1", header length (uint32), header (UTF-8 JSON: format, codec settings, tensor
    names in state-dict order, non-float tensors, the run's config.toml text), the
    ``encode_state`` buffer of the floating-point tensors, CRC-32 of everything above
"""

from __future__ import annotations

import json
import struct
import tomllib
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from smallfoot._io import atomic_write_bytes, load_checked
from smallfoot.compress.codec import (
    CodecConfig,
    CompressionError,
    bits_per_parameter,
    decode_state,
    encode_state,
)
from smallfoot.errors import ConfigError

FILE_NAME = "model.sfq"
"""Name of the compressed model in a run directory."""

_MAGIC = b"SFC1"
_FORMAT = 1
_LENGTH = struct.Struct("<I")
_CRC = struct.Struct("<I")


def compress_run(
    run_dir: str | Path, out: str | Path | None = None, config: CodecConfig = CodecConfig()
) -> dict[str, Any]:
    """Compress the model of ``run_dir/checkpoint.pt`` into ``out`` (default ``run_dir/model.sfq``).

    Returns ``path``, ``values`` (floating-point values coded), ``float32_bytes`` (what they
    take as float32), ``bytes`` (the file's size) and bits per value: ``raw`` (the N's),
    ``coded`` (the packages) and ``file`` (every byte of the file, header included).

    Raises:
        ConfigError: ``run_dir`` is not a run directory with a checkpoint.
        CompressionError: a tensor cannot be compressed (NaN/inf values).
    """
    run_dir = Path(run_dir)
    config_file = run_dir / "config.toml"
    if not config_file.is_file():
        raise ConfigError(
            f"{run_dir} is not a run directory (no config.toml); give the directory that `smallfoot train` printed"
        )
    checkpoint = run_dir / "checkpoint.pt"
    if not checkpoint.exists():
        raise ConfigError(
            f"{run_dir} has no checkpoint.pt (its method does not write one, or no epoch finished); train it with a method that checkpoints"
        )
    state = load_checked(checkpoint, "checkpoint")["model"]
    floats = {n: t for n, t in state.items() if t.is_floating_point()}
    others = {
        n: {
            "dtype": str(t.dtype).removeprefix("torch."),
            "shape": list(t.shape),
            "values": t.reshape(-1).tolist(),
        }
        for n, t in state.items()
        if not t.is_floating_point()
    }
    header = {
        "format": _FORMAT,
        "codec": asdict(config),
        "names": list(state),
        "others": others,
        "config": config_file.read_text(),
    }
    buffer = encode_state(floats, config)
    header_bytes = json.dumps(header).encode()
    body = _MAGIC + _LENGTH.pack(len(header_bytes)) + header_bytes + buffer
    data = body + _CRC.pack(zlib.crc32(body))
    path = Path(out) if out is not None else run_dir / FILE_NAME
    atomic_write_bytes(path, data)
    bits = bits_per_parameter(buffer)
    return {
        "path": str(path),
        "values": bits["values"],
        "float32_bytes": 4 * bits["values"],
        "bytes": len(data),
        "raw": bits["raw"],
        "coded": bits["coded"],
        "file": 8 * len(data) / bits["values"],
    }


def _read(path: Path) -> tuple[dict[str, Any], bytes]:
    """Header and package buffer of a verified compressed model file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"compressed model {path} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"compressed model {path} is a directory; give the .sfq file") from None
    fixed = len(_MAGIC) + _LENGTH.size + _CRC.size
    if len(data) < fixed or data[:4] != _MAGIC:
        raise CompressionError(
            f"{path} is not a compressed model written by `smallfoot compress` (or it is truncated); compress the run again"
        )
    body, (crc,) = data[: -_CRC.size], _CRC.unpack(data[-_CRC.size :])
    if zlib.crc32(body) != crc:
        raise CompressionError(
            f"compressed model {path} is corrupt or truncated (checksum mismatch); copy it again or re-run `smallfoot compress`"
        )
    (length,) = _LENGTH.unpack_from(body, 4)
    header = json.loads(body[8 : 8 + length])
    if header.get("format") != _FORMAT:
        raise CompressionError(
            f"compressed model {path} has format {header.get('format')}, this smallfoot reads {_FORMAT}; decompress it with the smallfoot that wrote it"
        )
    return header, body[8 + length :]


def decompress(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a compressed model file, in the checkpoint's order.

    Floating-point tensors are ``quantise`` of the originals (bin centres), others exact.

    Raises:
        CompressionError: the file is not a compressed model, or is corrupt or truncated.
    """
    header, buffer = _read(Path(path))
    floats = [n for n in header["names"] if n not in header["others"]]
    decoded = decode_state(buffer, floats)
    state = {}
    for name in header["names"]:
        if name in header["others"]:
            other = header["others"][name]
            dtype = getattr(torch, other["dtype"])
            state[name] = torch.tensor(other["values"], dtype=dtype).reshape(other["shape"])
        else:
            state[name] = decoded[name]
    return state


def run_config(path: str | Path):
    """The ``RunConfig`` of the run a compressed model file was made from."""
    from smallfoot.config import config_from_dict

    header, _ = _read(Path(path))
    return config_from_dict(tomllib.loads(header["config"]))


@torch.no_grad()
def model_accuracy(config, state: dict[str, torch.Tensor], batch_size: int = 1000) -> float:
    """Test accuracy (fraction) of ``state`` loaded into the model ``config``'s method builds.

    Raises:
        ConfigError: the state does not fit that model.
    """
    from smallfoot.data import load_dataset, ordered_loader
    from smallfoot.methods import RunContext, get_method

    test = load_dataset(
        config.dataset,
        "test",
        config.data_root,
        limit=config.test_limit,
        seed=config.seed,
        **config.data_options,
    )
    method = get_method(config.method, config.method_options)
    ctx = RunContext(config, method.options, test, test)
    torch.manual_seed(config.seed)
    model = method.build_model(ctx)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(
            f"the compressed model does not fit {config.model!r} as method {config.method!r} builds it ({str(exc).splitlines()[0]})"
        ) from None
    _, predict = method.make_loss(ctx)
    model.eval()
    correct = 0
    for x, y in ordered_loader(test, batch_size).epoch(0):
        correct += int((predict(model(x)) == y).sum())
    return correct / len(test)
