import math

import pytest
import torch
from torch import nn

from smallfoot.errors import ConfigError, InvertibilityError, ShapeError
from smallfoot.models import build_model
from smallfoot.reversible import (
    InvertibleBatchNorm2d,
    InvertibleConv2d,
    InvertibleLeakyReLU,
    RevSequence,
)
from smallfoot.reversible.snr import (
    alpha_batchnorm,
    alpha_batchnorm_toy,
    alpha_leaky_relu,
    measure_alpha,
    snr,
    snr_through_chain,
    to_db,
)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def batchnorm_with_scales(scales, eps_i=1e-3):
    layer = InvertibleBatchNorm2d(len(scales), eps_i=eps_i)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(scales) - eps_i)
    return layer


def test_snr_and_db():
    x = torch.randn(10, generator=gen(0))
    assert snr(x, x) == math.inf and to_db(math.inf) == math.inf
    assert snr(x, 1.1 * x) == pytest.approx(100.0)
    assert to_db(100.0) == pytest.approx(20.0) and to_db(0.0) == -math.inf
    assert snr(x, torch.full_like(x, float("nan"))) == 0.0
    with pytest.raises(ShapeError):
        snr(x, x[:5])


def test_batchnorm_toy_theory_and_general_formula_reduces_to_it():
    assert alpha_batchnorm_toy(1.0) == 1.0
    for rho in (0.01, 0.3, 2.0, 50.0):
        assert alpha_batchnorm_toy(rho) == pytest.approx(alpha_batchnorm_toy(1 / rho))
        assert alpha_batchnorm_toy(rho) < 1
        general = alpha_batchnorm([0.0, 0.0], [1.0, 1.0], [1.0, rho], [0.0, 0.0])
        assert general == pytest.approx(alpha_batchnorm_toy(rho))
    # equal scales and no bias: the SNR gains |x|^2 / |x - mean|^2 (the mean is removed)
    assert alpha_batchnorm([1.0, 1.0], [1.0, 1.0], [2.0, 2.0], [0.0, 0.0]) == pytest.approx(2.0)
    with pytest.raises(ShapeError):
        alpha_batchnorm([0.0], [1.0, 1.0], [1.0, 1.0], [0.0, 0.0])
    with pytest.raises(ConfigError):
        alpha_batchnorm([0.0], [1.0], [0.0], [0.0])


def test_leaky_relu_theory():
    assert alpha_leaky_relu(1.0) == 1.0
    for n in (0.1, 2.0, 10.0):
        assert alpha_leaky_relu(n) == pytest.approx(alpha_leaky_relu(1 / n))
        assert alpha_leaky_relu(n) == pytest.approx(4 / ((1 + n**-2) * (1 + n**2)))
        assert alpha_leaky_relu(n, 0.5, 0.5) == alpha_leaky_relu(n)
    # all inputs positive: the layer is the identity
    assert alpha_leaky_relu(10.0, 0.0, 0.0) == 1.0
    with pytest.raises(ConfigError):
        alpha_leaky_relu(0.0)


def test_measured_alpha_matches_the_toy_batchnorm():
    x = torch.randn(64, 2, 16, 16, generator=gen(1), dtype=torch.float64)
    for rho in (0.2, 5.0):
        measured = measure_alpha(batchnorm_with_scales([1.0, rho]), x, generator=gen(2))
        assert measured == pytest.approx(alpha_batchnorm_toy(rho), rel=0.03)


def test_measured_alpha_matches_the_general_batchnorm_formula():
    g = gen(3)
    mean, std = torch.tensor([-1.0, 0.0, 2.0, 0.5]), torch.tensor([0.2, 1.0, 3.0, 0.5])
    x = mean.view(1, -1, 1, 1) + std.view(1, -1, 1, 1) * torch.randn(64, 4, 16, 16, generator=g)
    layer = batchnorm_with_scales([0.3, 1.0, 4.0, 0.1])
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([0.5, 0.0, -1.0, 0.2]))
    theory = alpha_batchnorm(mean, std, layer.scale(), layer.bias)
    assert measure_alpha(layer, x, generator=g) == pytest.approx(theory, rel=0.03)


def test_measured_alpha_matches_the_leaky_relu_theory():
    x = torch.randn(64, 4, 16, 16, generator=gen(4), dtype=torch.float64)
    for n in (2.0, 10.0):
        measured = measure_alpha(InvertibleLeakyReLU(1 / n), x, generator=gen(5))
        assert measured == pytest.approx(alpha_leaky_relu(n), rel=0.03)
    shifted = x + 0.7
    negative = shifted <= 0
    fraction = negative.double().mean().item()
    power = (shifted[negative].square().sum() / shifted.square().sum()).item()
    measured = measure_alpha(InvertibleLeakyReLU(0.2), shifted, generator=gen(6))
    assert measured == pytest.approx(alpha_leaky_relu(5.0, fraction, power), rel=0.03)


def test_measure_alpha_leaves_the_layer_alone():
    layer = InvertibleBatchNorm2d(3)
    measure_alpha(layer, torch.randn(4, 3, 4, 4, generator=gen(7)), generator=gen(8))
    assert layer.running_mean.dtype == torch.float32 and layer.num_batches_tracked == 0
    with pytest.raises(InvertibilityError):
        measure_alpha(nn.ReLU(), torch.randn(3))
    with pytest.raises(ConfigError):
        measure_alpha(InvertibleLeakyReLU(0.5), torch.randn(3), noise_std=0.0)


def layerwise_chain(units, slope, channels=4):
    layers = []
    for _ in range(units):
        layers += [
            InvertibleConv2d(channels),
            InvertibleBatchNorm2d(channels),
            InvertibleLeakyReLU(slope),
        ]
    return RevSequence(layers)


def test_chain_snr_falls_with_depth_in_a_layerwise_chain():
    torch.manual_seed(0)
    chain = layerwise_chain(4, slope=0.1)
    x = torch.randn(4, 4, 8, 8, generator=gen(9))
    result = snr_through_chain(chain, x, noise_std=1e-5, generator=gen(10))
    assert len(result.snr_db) == len(result.depth) == len(chain.blocks) + 1
    assert result.depth == list(range(13)) and result.names[0] == "input"
    assert result.snr_db[-1] == pytest.approx(100.0, abs=0.5)  # the injected noise
    # each Leaky ReLU with n = 10 costs about 14 dB (eq. 28c): 4 of them at least 40 dB
    assert result.snr_db[0] < result.snr_db[-1] - 40
    assert result.snr_db[0] < result.snr_db[6] < result.snr_db[-1]
    assert not result.hidden and result.worst_db() == min(result.snr_db)
    assert chain.blocks[1].num_batches_tracked == 0  # analysed on a copy


def test_float32_rounding_mode_starts_exact():
    torch.manual_seed(0)
    chain = layerwise_chain(2, slope=0.5)
    x = torch.randn(4, 4, 8, 8, generator=gen(11))
    result = snr_through_chain(chain, x, noise_std=None)
    assert result.snr_db[-1] == math.inf
    assert 40 < result.snr_db[0] < 160  # float32 rounding, amplified a little


def test_hybrid_keeps_a_higher_snr_than_layerwise_at_the_same_depth():
    worst = {}
    for name in ("layerwise18", "hybrid18"):
        torch.manual_seed(0)
        model = build_model(name, (3, 16, 16), 10, width=4, blocks_per_stage=1, negative_slope=0.1)
        with torch.no_grad():
            x = model.stem(torch.randn(4, 3, 16, 16, generator=gen(12)))
        result = snr_through_chain(model.body, x, noise_std=1e-5, generator=gen(13))
        assert result.depth[-1] == 24  # the same layers in both designs
        worst[name] = result.worst_db()
        if name == "hybrid18":
            # 4 blocks x (F, G) x (inputs of Leaky ReLU and conv), inside the blocks
            assert len(result.hidden) == 16
            boundaries = set(result.depth)
            assert all(h.depth not in boundaries for h in result.hidden)
            assert {h.branch for h in result.hidden} == {"F", "G"}
    assert worst["hybrid18"] > worst["layerwise18"] + 50
    assert worst["hybrid18"] > 30


def test_chain_errors():
    with pytest.raises(InvertibilityError):
        snr_through_chain([nn.ReLU()], torch.randn(2, 2))
    with pytest.raises(ConfigError):
        snr_through_chain([], torch.randn(2, 2))
