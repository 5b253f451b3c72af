"""Entropy-quantised parameter packages (thesis chapter 3, Algorithms 1 and 2).

Per layer: sample a fraction ``F`` of the values, quantise the sample to ``M`` bits between the
layer's min and max, estimate its entropy ``H`` (bits), quantise the whole layer to
``N = round(H) + c`` bits (``2**N`` equal bins, values at the bin centres), and entropy-code the
bin indices with a range coder (``constriction``) whose model is the layer's bin histogram.

A package is self-describing bytes::

    header   magic b"SFQ1", version, dtype code, N, layout, ndim, name length,
             shape (ndim x uint64), min and max (float64), used-bin count k, payload bytes
    name     utf-8
    table    (range-coded layout only) the bins that occur, as k x uint16 or a 2**N-bit
             bitmap, whichever is smaller; then k counts of 1, 2 or 4 bytes: the decoder
             rebuilds the coder's model from them
    payload  uint32 words of the range coder, or N-bit fields when those are smaller
    crc32    of everything above

``N = 0`` marks a constant (or empty) layer: no table, no payload, every value is ``min``.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import constriction
import numpy as np
import torch

from smallfoot.errors import ConfigError, SmallfootError

MAX_BITS = 16
"""Largest N a package can hold (bins are stored as uint16)."""

_MAGIC = b"SFQ1"
_STATE_MAGIC = b"SFS1"
_VERSION = 1
_HEAD = struct.Struct("<4sBBBBBH")  # magic, version, dtype code, N, layout, ndim, name length
_RANGE = struct.Struct("<ddII")  # min, max, used bins, payload bytes
# layout: the low two bits say how indices are stored; bit 2 and bits 3-4 describe the table.
_CONSTANT, _PACKED, _CODED, _BITMAP = 0, 1, 2, 4
_WIDTHS = (1, 2, 4, 0)  # bytes per count, by bits 3-4 of the layout
_CRC = struct.Struct("<I")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class CompressionError(SmallfootError):
    """A tensor cannot be compressed, or a package is corrupt, truncated or for another layer."""


@dataclass(frozen=True)
class CodecConfig:
    """How layers are quantised (thesis section 3.8 defaults: F = 0.03, M = 4, c = 6).

    Attributes:
        c: the quantisation floor in bits; ``N = round(H) + c``.
        m: bits of the preliminary quantiser whose entropy ``H`` (at most ``m``) is estimated.
        fraction: share ``F`` of a layer's values sampled for the entropy estimate (at least one).
        bits: a fixed ``N`` for every layer (thesis figure 3.1) instead of ``round(H) + c``.
        seed: seed of the sample, so that encoder and ``quantise`` choose the same ``N``.
    """

    c: int = 6
    m: int = 4
    fraction: float = 0.03
    bits: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.m <= MAX_BITS:
            raise ConfigError(
                f"codec m={self.m} is out of range; use 1 <= m <= {MAX_BITS} (thesis: 4)"
            )
        if not 0 <= self.c <= MAX_BITS - self.m:
            raise ConfigError(
                f"codec c={self.c} with m={self.m} can exceed {MAX_BITS} bits; use 0 <= c <= {MAX_BITS - self.m} (thesis: c=6, m=4)"
            )
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"codec fraction={self.fraction} must be in (0, 1]; thesis: 0.03")
        if self.bits is not None and not 1 <= self.bits <= MAX_BITS:
            raise ConfigError(
                f"codec bits={self.bits} is out of range; use 1 <= bits <= {MAX_BITS}"
            )


@dataclass(frozen=True)
class PackageInfo:
    """What a package holds, read from its header (no decoding).

    Attributes:
        name: the layer name.
        shape: the tensor shape.
        dtype: the tensor dtype.
        bits: N, bits per value before entropy coding (0 for a constant layer).
        nbytes: size of the whole package in bytes.
    """

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    bits: int
    nbytes: int

    @property
    def numel(self) -> int:
        """Number of values in the layer."""
        return math.prod(self.shape)


def _where(name: str | None, rank: int | None, *, as_read: bool = False) -> str:
    text = f"layer {name!r}" if name is not None else "a layer of unknown name"
    if as_read and name is not None:
        text += " (name as read from the damaged package)"
    return text if rank is None else f"{text} from rank {rank}"


def _as_float64(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """The tensor flattened to float64 on the CPU, after checking dtype and finiteness."""
    if tensor.dtype not in _DTYPES:
        raise CompressionError(
            f"layer {name!r} has dtype {tensor.dtype}; only floating-point layers can be quantised, send it uncompressed"
        )
    flat = tensor.detach().reshape(-1).to("cpu", torch.float64)
    if not bool(torch.isfinite(flat).all()):
        raise CompressionError(
            f"layer {name!r} holds NaN or infinite values, which cannot be quantised; fix the training (lower the learning rate) before compressing"
        )
    return flat


def _bounds(flat: torch.Tensor, name: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in torch.aminmax(flat))
    if not math.isfinite(hi - lo):
        raise CompressionError(
            f"layer {name!r} spans [{lo}, {hi}], too wide to quantise in float64; rescale the layer"
        )
    return lo, hi


def _bin_indices(flat: torch.Tensor, lo: float, hi: float, bits: int) -> torch.Tensor:
    """Bin of each value among ``2**bits`` equal bins over [lo, hi] (``hi`` falls in the last)."""
    # (w - lo) / (hi - lo) rather than a precomputed scale: stays finite for subnormal ranges.
    q = torch.floor((flat - lo) / (hi - lo) * (1 << bits))
    return q.clamp_(0, (1 << bits) - 1).to(torch.int64)


def _bin_centres(q: torch.Tensor, lo: float, hi: float, bits: int) -> torch.Tensor:
    """Float64 value at the centre of each bin index in ``q`` (thesis Algorithm 2, line 4)."""
    return lo + (hi - lo) * (q.to(torch.float64) + 0.5) / (1 << bits)


def estimate_entropy(
    flat: torch.Tensor, lo: float, hi: float, config: CodecConfig = CodecConfig()
) -> float:
    """Entropy in bits of a sample of ``flat`` quantised to ``config.m`` bits over [lo, hi].

    The sample has ``max(1, round(fraction * numel))`` distinct values drawn by a
    generator seeded with ``config.seed`` (thesis: Estimate Entropy). ``flat``: 1-D float64, hi > lo.
    """
    size = max(1, round(config.fraction * flat.numel()))
    generator = torch.Generator().manual_seed(config.seed)
    sample = flat[torch.randperm(flat.numel(), generator=generator)[:size]]
    counts = torch.bincount(_bin_indices(sample, lo, hi, config.m), minlength=1 << config.m)
    p = counts[counts > 0].to(torch.float64) / size
    return float(-(p * torch.log2(p)).sum())


def choose_bits(tensor: torch.Tensor, config: CodecConfig = CodecConfig(), name: str = "") -> int:
    """N for this layer: ``config.bits`` if fixed, else ``max(1, round(H) + c)``; 0 if constant/empty."""
    flat = _as_float64(tensor, name)
    if flat.numel() == 0:
        return 0
    lo, hi = _bounds(flat, name)
    return _choose(flat, lo, hi, config)


def _choose(flat: torch.Tensor, lo: float, hi: float, config: CodecConfig) -> int:
    if lo == hi:
        return 0
    if config.bits is not None:
        return config.bits
    return max(1, round(estimate_entropy(flat, lo, hi, config)) + config.c)


def quantise(
    tensor: torch.Tensor, config: CodecConfig = CodecConfig(), name: str = ""
) -> torch.Tensor:
    """The tensor with every value moved to the centre of its bin (same shape and dtype).

    Exactly what ``decode(encode(tensor))`` returns; the error per value is at most half a bin,
    ``(max - min) / 2**(N + 1)`` (plus the rounding of the centre to the dtype).
    """
    flat = _as_float64(tensor, name)
    if flat.numel() == 0:
        return tensor.detach().clone()
    lo, hi = _bounds(flat, name)
    bits = _choose(flat, lo, hi, config)
    if bits == 0:
        return torch.full_like(tensor, lo).detach()
    q = _bin_indices(flat, lo, hi, bits)
    centres = _bin_centres(q, lo, hi, bits).to(tensor.dtype).reshape(tensor.shape)
    return centres.to(tensor.device)


def _model(counts: np.ndarray):
    # Integer counts as float64: encoder and decoder build bit-identical models from them.
    return constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False)


def _coded(q: np.ndarray, bits: int) -> tuple[int, bytes, bytes, int]:
    """Range-coded sections of bin indices ``q``: (layout, table bytes, payload bytes, used bins)."""
    histogram = np.bincount(q, minlength=1 << bits)
    bins = np.flatnonzero(histogram)
    counts = histogram[bins]
    width = next(w for w in (1, 2, 4) if int(counts.max()) < 256**w)
    bitmap = ((1 << bits) + 7) // 8 < 2 * len(bins)
    bins_bytes = np.packbits(histogram > 0).tobytes() if bitmap else bins.astype("<u2").tobytes()
    # Code the rank of each bin among those that occur: the model has no unused symbols.
    rank_of_bin = np.zeros(1 << bits, np.int32)
    rank_of_bin[bins] = np.arange(len(bins), dtype=np.int32)
    encoder = constriction.stream.queue.RangeEncoder()
    encoder.encode(rank_of_bin[q], _model(counts))
    payload = encoder.get_compressed().astype("<u4").tobytes()
    layout = _CODED | (_BITMAP if bitmap else 0) | ({1: 0, 2: 1, 4: 2}[width] << 3)
    return layout, bins_bytes + counts.astype(f"<u{width}").tobytes(), payload, len(bins)


def _pack(q: np.ndarray, bits: int) -> bytes:
    """Bin indices as ``bits``-bit big-endian fields, concatenated."""
    fields = np.unpackbits(q.astype(">u2").view(np.uint8)).reshape(-1, 16)[:, 16 - bits :]
    return np.packbits(fields).tobytes()


def _unpack(payload: bytes, bits: int, numel: int) -> np.ndarray:
    fields = np.unpackbits(np.frombuffer(payload, np.uint8), count=numel * bits)
    wide = np.zeros((numel, 16), np.uint8)
    wide[:, 16 - bits :] = fields.reshape(numel, bits)
    return np.packbits(wide).view(">u2").astype(np.int64)


def _table_size(layout: int, bits: int, used: int) -> int:
    if layout & 3 != _CODED:
        return 0
    bins = ((1 << bits) + 7) // 8 if layout & _BITMAP else 2 * used
    return bins + used * _WIDTHS[(layout >> 3) & 3]


def encode(tensor: torch.Tensor, name: str, config: CodecConfig = CodecConfig()) -> bytes:
    """One layer's package (thesis Algorithm 1): quantise to N bits, range-code, add a checksum.

    The bin indices are range-coded with the layer's histogram as model, or stored as plain
    N-bit fields when that is smaller (small layers, where the histogram costs more than it saves).

    Args:
        tensor: a floating-point tensor of any shape (float16, bfloat16, float32, float64).
        name: the layer name the package carries (checked by ``decode``).
        config: the quantiser settings.

    Raises:
        CompressionError: a non-float dtype, NaN/inf values, or a range too wide for float64.
    """
    flat = _as_float64(tensor, name)
    lo = hi = 0.0
    bits = 0
    layout, table, payload, used = _CONSTANT, b"", b"", 0
    if flat.numel() > 0:
        lo, hi = _bounds(flat, name)
        bits = _choose(flat, lo, hi, config)
    if bits > 0:
        q = _bin_indices(flat, lo, hi, bits).numpy()
        layout, table, payload, used = _coded(q, bits)
        if (len(q) * bits + 7) // 8 <= len(table) + len(payload):
            layout, table, payload, used = _PACKED, b"", _pack(q, bits), 0
    encoded_name = name.encode()
    body = b"".join(
        [
            _HEAD.pack(
                _MAGIC,
                _VERSION,
                _DTYPES.index(tensor.dtype),
                bits,
                layout,
                tensor.dim(),
                len(encoded_name),
            ),
            struct.pack(f"<{tensor.dim()}Q", *tensor.shape),
            _RANGE.pack(lo, hi, used, len(payload)),
            encoded_name,
            table,
            payload,
        ]
    )
    return body + _CRC.pack(zlib.crc32(body))


def _parse(package: bytes, name: str | None, rank: int | None):
    """Header fields and the table's offset of a package whose checksum and length are verified."""
    package = bytes(package)
    claimed = _peek_name(package)
    label = _where(name, rank) if name is not None else _where(claimed, rank, as_read=True)
    fixed = _HEAD.size + _RANGE.size + _CRC.size
    if len(package) < fixed:
        raise CompressionError(
            f"compressed package for {label} is truncated ({len(package)} bytes); the sender's data was cut short, re-send it"
        )
    body, (crc,) = package[: -_CRC.size], _CRC.unpack(package[-_CRC.size :])
    if zlib.crc32(body) != crc:
        raise CompressionError(
            f"compressed package for {label} is corrupt or truncated (checksum mismatch); re-send it and check the link or file"
        )
    magic, version, dtype_code, bits, layout, ndim, name_len = _HEAD.unpack_from(package)
    if magic != _MAGIC or version != _VERSION or dtype_code >= len(_DTYPES) or bits > MAX_BITS:
        raise CompressionError(
            f"package for {label} is not a smallfoot package of version {_VERSION}; encode it with this smallfoot"
        )
    offset = _HEAD.size
    shape = struct.unpack_from(f"<{ndim}Q", package, offset)
    offset += 8 * ndim
    lo, hi, used, payload_bytes = _RANGE.unpack_from(package, offset)
    offset += _RANGE.size
    label = _where(claimed, rank)
    if name is not None and claimed != name:
        raise CompressionError(
            f"package from rank {rank} holds layer {claimed!r}, expected {name!r}; both sides must encode the same layers in the same order"
            if rank is not None
            else f"package holds layer {claimed!r}, expected {name!r}; decode it with name={claimed!r}"
        )
    offset += name_len
    table = _table_size(layout, bits, used)
    if offset + table + payload_bytes + _CRC.size != len(package):
        raise CompressionError(
            f"compressed package for {label} has {len(package)} bytes, its header disagrees; re-encode it"
        )
    header = (claimed, tuple(shape), _DTYPES[dtype_code], bits, layout, lo, hi, used)
    return package, header, offset, table


def _peek_name(package: bytes) -> str | None:
    """The name a (possibly damaged) package claims, or None when it cannot be read."""
    try:
        ndim, name_len = _HEAD.unpack_from(package)[-2:]
        start = _HEAD.size + 8 * ndim + _RANGE.size
        return package[start : start + name_len].decode()
    except (struct.error, UnicodeDecodeError):
        return None


def read_info(package: bytes, name: str | None = None, rank: int | None = None) -> PackageInfo:
    """The header of a verified package (checksum and length checked), without decoding it."""
    package, (claimed, shape, dtype, bits, *_), _, _ = _parse(package, name, rank)
    return PackageInfo(claimed, shape, dtype, bits, len(package))


def decode(package: bytes, name: str | None = None, rank: int | None = None) -> torch.Tensor:
    """The tensor a package holds (thesis Algorithm 2), equal bit for bit to ``quantise`` of the original.

    Args:
        package: bytes from ``encode``.
        name: the layer the caller expects; a package for another layer is refused.
        rank: the sender, named in errors.

    Raises:
        CompressionError: the package is truncated, corrupt, or for another layer; the message
            names the layer (and the rank when given).
    """
    package, header, offset, table = _parse(package, name, rank)
    claimed, shape, dtype, bits, layout, lo, hi, used = header
    numel = math.prod(shape)
    if layout & 3 == _CONSTANT:
        return torch.full(shape, lo, dtype=dtype)
    payload = package[offset + table : -_CRC.size]
    if layout & 3 == _PACKED:
        q = _unpack(payload, bits, numel)
    else:
        width = _WIDTHS[(layout >> 3) & 3]
        counts_at = offset + table - used * width
        if layout & _BITMAP:
            bitmap = np.frombuffer(package, np.uint8, counts_at - offset, offset)
            bins = np.flatnonzero(np.unpackbits(bitmap, count=1 << bits))
        else:
            bins = np.frombuffer(package, "<u2", used, offset).astype(np.int64)
        counts = np.frombuffer(package, f"<u{width}", used, counts_at)
        if len(bins) != used or int(counts.sum()) != numel or (bins >= 1 << bits).any():
            raise CompressionError(
                f"compressed package for {_where(claimed, rank)} has an inconsistent histogram; re-encode it"
            )
        words = np.frombuffer(payload, "<u4").astype(np.uint32)
        ranks = constriction.stream.queue.RangeDecoder(words).decode(_model(counts), numel)
        q = bins[ranks]
    return _bin_centres(torch.from_numpy(q), lo, hi, bits).to(dtype).reshape(shape)


def encode_state(tensors: Mapping[str, torch.Tensor], config: CodecConfig = CodecConfig()) -> bytes:
    """Packages of several named tensors in one buffer: b"SFS1", count, then (length, package)s."""
    packages = [encode(t, n, config) for n, t in tensors.items()]
    parts = [_STATE_MAGIC, struct.pack("<I", len(packages))]
    for package in packages:
        parts += [struct.pack("<Q", len(package)), package]
    return b"".join(parts)


def split_state(buffer: bytes, rank: int | None = None) -> list[bytes]:
    """The packages of an ``encode_state`` buffer, in order (lengths checked, not contents)."""
    buffer = bytes(buffer)
    if buffer[:4] != _STATE_MAGIC or len(buffer) < 8:
        raise CompressionError(
            f"compressed state{'' if rank is None else f' from rank {rank}'} does not start with a smallfoot header; it is corrupt or not from encode_state"
        )
    (count,) = struct.unpack_from("<I", buffer, 4)
    offset, packages = 8, []
    for _ in range(count):
        if offset + 8 > len(buffer):
            break
        (length,) = struct.unpack_from("<Q", buffer, offset)
        if offset + 8 + length > len(buffer):
            break
        packages.append(buffer[offset + 8 : offset + 8 + length])
        offset += 8 + length
    else:
        if offset == len(buffer):
            return packages
    raise CompressionError(
        f"compressed state{'' if rank is None else f' from rank {rank}'} is truncated or corrupt after {len(packages)} of {count} layers; re-send it"
    )


def decode_state(
    buffer: bytes, names: list[str] | None = None, rank: int | None = None
) -> dict[str, torch.Tensor]:
    """Tensors of an ``encode_state`` buffer by name; ``names`` (expected, in order) are checked."""
    packages = split_state(buffer, rank)
    if names is not None and len(names) != len(packages):
        raise CompressionError(
            f"compressed state{'' if rank is None else f' from rank {rank}'} holds {len(packages)} layers, expected {len(names)}; both sides must send the same layers"
        )
    out = {}
    for index, package in enumerate(packages):
        name = read_info(package, rank=rank).name if names is None else names[index]
        out[name] = decode(package, name, rank)
    return out


def bits_per_parameter(buffer: bytes) -> dict[str, float]:
    """Bits per value of an ``encode_state`` buffer: ``raw`` (the N's) and ``coded`` (all bytes sent).

    ``coded`` counts every byte of the buffer (headers, histograms, checksums); both are weighted
    by the number of values of each layer.
    """
    infos = [read_info(p) for p in split_state(buffer)]
    numel = sum(i.numel for i in infos)
    if numel == 0:
        raise CompressionError("the compressed state holds no values; nothing to measure")
    return {
        "raw": sum(i.bits * i.numel for i in infos) / numel,
        "coded": 8 * len(buffer) / numel,
        "values": numel,
    }
