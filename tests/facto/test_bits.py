import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from smallfoot.facto import pack_bits, unpack_bits


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=4), st.integers(0, 2**31 - 1))
def test_pack_unpack_round_trip(shape, seed):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) > 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.shape == (math.ceil(mask.numel() / 8),)
    assert torch.equal(unpack_bits(packed, mask.shape), mask)


def test_bit_order_is_little_endian_within_a_byte():
    mask = torch.tensor([True, False, False, False, False, False, False, True, True])
    assert pack_bits(mask).tolist() == [0b10000001, 0b00000001]
