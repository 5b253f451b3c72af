"""Bit packing: a boolean mask stored as 8 elements per byte (``uint8``), and back."""

from __future__ import annotations

import math

import torch

# Multiplying a word whose 8 bytes are 0 or 1 by this constant gathers byte i into bit 56 + i
# (little-endian words: byte i of the word is element 8 j + i of the mask).
_GATHER = 0x0102040810204080


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Pack a boolean tensor of any shape into a 1-D ``uint8`` tensor of ``ceil(numel / 8)`` bytes.

    Element ``8 j + i`` of the flattened mask is bit ``i`` of byte ``j``.
    """
    flat = mask.reshape(-1).view(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad or flat.storage_offset() % 8:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    words = flat.view(torch.int64)  # 8 mask bytes per word, one word per packed byte
    return ((words * _GATHER) >> 56).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """The boolean tensor of ``shape`` that :func:`pack_bits` turned into ``packed``."""
    # row v of the table holds the 8 bits of byte value v; built per call (2 KiB) so that it
    # lives where ``packed`` lives, fake tensors included
    values = torch.arange(256, device=packed.device).unsqueeze(1)
    table = ((values >> torch.arange(8, device=packed.device)) & 1).bool()  # (256, 8)
    bits = table[packed.long()]  # (bytes, 8)
    return bits.view(-1)[: math.prod(shape)].view(shape)
