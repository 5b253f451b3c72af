"""Bit packing: a boolean mask stored as 8 elements per byte (``uint8``), and back."""

from __future__ import annotations

import torch


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Pack a boolean tensor of any shape into a 1-D ``uint8`` tensor of ``ceil(numel / 8)`` bytes.

    Element ``8 * j + i`` of the flattened mask is bit ``i`` of byte ``j``.
    """
    flat = mask.reshape(-1)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    groups = flat.view(-1, 8)  # (numel / 8, 8)
    packed = torch.zeros(groups.shape[0], dtype=torch.uint8, device=mask.device)
    for bit in range(8):
        # one strided column at a time keeps the temporary at numel / 8 bytes
        packed |= groups[:, bit].to(torch.uint8) << bit
    return packed


def unpack_bits(packed: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """The boolean tensor of ``shape`` that :func:`pack_bits` turned into ``packed``."""
    numel = 1
    for size in shape:
        numel *= size
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(1) >> shifts) & 1  # (bytes, 8)
    return bits.view(-1)[:numel].view(shape).bool()
