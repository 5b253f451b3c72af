"""The chapter-3 codec: round trips bit for bit, N = round(H) + c, refusals and corrupt packages."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from smallfoot.compress import (
    CodecConfig,
    CompressionError,
    bits_per_parameter,
    choose_bits,
    decode,
    decode_state,
    encode,
    encode_state,
    estimate_entropy,
    quantise,
    read_info,
    split_state,
)
from smallfoot.errors import ConfigError, SmallfootError

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bytes (NaN-safe, distinguishes -0.0)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    as_int = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.contiguous().view(as_int), b.contiguous().view(as_int))


@st.composite
def tensors(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=0, max_size=4)))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-6, 1e-2, 1.0, 30.0]))
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(shape, generator=generator, dtype=torch.float64) * scale
    if draw(st.booleans()):  # few distinct values, as in trained or pruned layers
        values = values.round()
    return values.to(dtype)


@settings(max_examples=150, deadline=None)
@given(tensors(), st.sampled_from([CodecConfig(), CodecConfig(c=2, m=2), CodecConfig(bits=3)]))
def test_decode_of_encode_is_quantise_bit_for_bit(tensor, config):
    package = encode(tensor, "layer", config)
    out = decode(package, "layer")
    assert _same_bits(out, quantise(tensor, config))
    info = read_info(package)
    assert (info.name, info.shape, info.dtype, info.nbytes) == (
        "layer",
        tuple(tensor.shape),
        tensor.dtype,
        len(package),
    )


@settings(max_examples=60, deadline=None)
@given(tensors())
def test_quantisation_error_is_at_most_half_a_bin(tensor):
    if tensor.numel() == 0:
        return
    wide = tensor.double()
    lo, hi = float(wide.min()), float(wide.max())
    bits = choose_bits(tensor)
    error = (quantise(tensor).double() - wide).abs().max().item()
    half_bin = (hi - lo) / 2 ** (bits + 1) if bits else 0.0
    # the centre's rounding to the dtype (relative, or one subnormal step near zero), plus
    # float64 arithmetic on the bin edges
    info = torch.finfo(tensor.dtype)
    rounding = (float(info.eps) + 4 * 2.0**-52) * (abs(lo) + abs(hi))
    rounding += float(info.smallest_normal) * float(info.eps)
    assert error <= half_bin + rounding


def test_bits_are_rounded_entropy_plus_floor():
    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(20_000, generator=generator)
    config = CodecConfig(c=6, m=4, fraction=0.03)
    flat = weights.double()
    entropy = estimate_entropy(flat, float(flat.min()), float(flat.max()), config)
    assert 0 < entropy <= 4
    assert choose_bits(weights, config) == round(entropy) + 6
    assert choose_bits(weights, CodecConfig(bits=5)) == 5


def test_entropy_of_two_equal_halves_is_one_bit():
    values = torch.tensor([0.0, 1.0]).repeat(5_000).double()
    assert estimate_entropy(values, 0.0, 1.0, CodecConfig(fraction=1.0)) == pytest.approx(1.0)


def test_centres_of_a_known_layer():
    # [0, 1] in 2**3 bins: 0.3 falls in bin 2 (centre 0.3125), 1.0 in the last bin (0.9375).
    out = quantise(torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64), CodecConfig(bits=3))
    assert out.tolist() == [0.0625, 0.3125, 0.9375]


def test_constant_and_empty_layers_cost_no_payload():
    constant = torch.full((100, 10), 0.25)
    assert torch.equal(decode(encode(constant, "b")), constant)
    assert read_info(encode(constant, "b")).bits == 0
    empty = torch.zeros(0, 3, dtype=torch.float16)
    out = decode(encode(empty, "e"))
    assert out.shape == (0, 3) and out.dtype == torch.float16


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_are_refused_naming_the_layer(bad):
    weights = torch.ones(10)
    weights[3] = bad
    with pytest.raises(CompressionError, match="'fc1.weight'.*NaN or infinite"):
        encode(weights, "fc1.weight")


def test_integer_tensors_are_refused():
    with pytest.raises(CompressionError, match="'steps'.*dtype torch.int64"):
        encode(torch.arange(5), "steps")


def test_compression_error_is_a_smallfoot_error():
    assert issubclass(CompressionError, SmallfootError)


@pytest.mark.parametrize(
    "kwargs", [{"m": 0}, {"c": 13, "m": 4}, {"fraction": 0.0}, {"bits": 17}, {"bits": 0}]
)
def test_bad_codec_settings_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        CodecConfig(**kwargs)


def _package() -> bytes:
    weights = torch.randn(300, generator=torch.Generator().manual_seed(1))
    return encode(weights, "conv2.weight")


@pytest.mark.parametrize("position", [0, 5, 30, 70, 200, -1])
def test_a_flipped_byte_is_detected_with_layer_and_rank(position):
    damaged = bytearray(_package())
    damaged[position] ^= 0x10
    with pytest.raises(CompressionError, match="'conv2.weight' from rank 3.*corrupt"):
        decode(bytes(damaged), "conv2.weight", rank=3)


@pytest.mark.parametrize("keep", [0, 10, 100, -1])
def test_a_truncated_package_is_detected(keep):
    with pytest.raises(CompressionError, match="'conv2.weight' from rank 1.*(truncated|corrupt)"):
        decode(_package()[:keep], "conv2.weight", rank=1)


def test_a_damaged_package_without_expected_name_still_names_a_layer():
    damaged = bytearray(_package())
    damaged[-1] ^= 1
    with pytest.raises(CompressionError, match="'conv2.weight' \\(name as read"):
        decode(bytes(damaged))


def test_a_package_for_another_layer_is_refused():
    with pytest.raises(CompressionError, match="holds layer 'conv2.weight', expected 'fc.bias'"):
        decode(_package(), "fc.bias", rank=0)


def test_state_round_trip_and_bits_per_parameter():
    generator = torch.Generator().manual_seed(2)
    state = {"a.weight": torch.randn(50, 40, generator=generator), "a.bias": torch.zeros(40)}
    buffer = encode_state(state)
    out = decode_state(buffer, names=list(state))
    assert list(out) == list(state)
    for name, tensor in state.items():
        assert _same_bits(out[name], quantise(tensor))
    bits = bits_per_parameter(buffer)
    assert bits["values"] == 2040
    assert bits["coded"] == 8 * len(buffer) / 2040
    assert bits["raw"] == choose_bits(state["a.weight"]) * 2000 / 2040


def test_a_truncated_state_names_the_rank():
    buffer = encode_state({"w": torch.randn(100), "v": torch.randn(100)})
    with pytest.raises(CompressionError, match="from rank 1 is truncated or corrupt after 1 of 2"):
        split_state(buffer[:-20], rank=1)
    with pytest.raises(CompressionError, match="holds 2 layers, expected 3"):
        decode_state(buffer, names=["w", "v", "u"], rank=1)


def test_entropy_coding_beats_raw_bits_on_peaked_weights():
    # Laplace-like weights (as trained layers are) have H well below N: coding must gain.
    generator = np.random.default_rng(0)
    weights = torch.from_numpy(generator.laplace(0, 0.02, 50_000).astype(np.float32))
    buffer = encode_state({"w": weights})
    bits = bits_per_parameter(buffer)
    assert bits["coded"] < bits["raw"] - 1
    assert _same_bits(decode_state(buffer)["w"], quantise(weights))


def test_a_small_layer_is_stored_as_plain_fields_when_the_histogram_costs_more():
    # 10 distinct values at N = 6+: a histogram would cost more than 10 x N bits.
    bias = torch.linspace(-1, 1, 10)
    package = encode(bias, "fc.bias")
    bits = read_info(package).bits
    header = len(encode(torch.zeros(10), "fc.bias"))
    assert len(package) == header + (10 * bits + 7) // 8
    assert _same_bits(decode(package), quantise(bias))
