import copy

import pytest
import torch

from smallfoot.errors import ConfigError, InvertibilityError, ShapeError
from smallfoot.reversible import (
    BatchPool,
    BatchUnpool,
    ChannelPool,
    InvertibleBatchNorm2d,
    InvertibleConv2d,
    InvertibleLeakyReLU,
    InvertibleSequential,
    RevSequence,
)
from smallfoot.reversible.layers import replaying_batch_stats
from smallfoot.testing import check_grad_parity, check_invertible


def x64(*shape):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def test_batch_pool_layout_and_inverse():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float64).reshape(2, 3, 4, 4)
    y = BatchPool(2)(x)
    assert y.shape == (8, 3, 2, 2)
    # output sample k*N + n (N = 2) is x[n, :, i::2, j::2] with k = 2i + j
    assert torch.equal(y[1 * 2 + 1], x[1, :, 0::2, 1::2])
    assert torch.equal(y[2 * 2 + 0], x[0, :, 1::2, 0::2])
    assert torch.equal(y[3 * 2 + 0], x[0, :, 1::2, 1::2])
    assert torch.equal(BatchPool(2).inverse(y), x)
    assert torch.equal(BatchUnpool(2)(y), x)
    assert torch.equal(BatchUnpool(2).inverse(x), y)


def test_channel_pool_shape_and_inverse():
    x = x64(2, 3, 4, 6)
    y = ChannelPool(2)(x)
    assert y.shape == (2, 12, 2, 3)
    assert torch.equal(ChannelPool(2).inverse(y), x)


def test_pooling_shape_errors():
    with pytest.raises(ShapeError, match="divisible"):
        BatchPool(2)(torch.randn(1, 1, 5, 4))
    with pytest.raises(ShapeError, match="divisible by 4"):
        BatchPool(2).inverse(torch.randn(3, 1, 2, 2))


def test_invertible_batchnorm_matches_formula_and_inverts():
    torch.manual_seed(0)
    bn = InvertibleBatchNorm2d(3, eps_i=0.1).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, -0.5, 0.0]))
        bn.bias.copy_(torch.tensor([0.2, 0.0, -1.0]))
    x = x64(4, 3, 5, 5) * 3 + 1
    y = bn(x)
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    scale = torch.tensor([1.1, 0.6, 0.1], dtype=torch.float64).view(1, 3, 1, 1)
    expected = scale * (x - mean) / torch.sqrt(var + 1e-5) + bn.bias.view(1, 3, 1, 1)
    assert torch.allclose(y, expected, atol=1e-12)
    assert (bn.inverse(y) - x).abs().max() < 1e-12  # training mode: batch statistics
    assert bn.num_batches_tracked.item() == 1
    reference = torch.nn.BatchNorm2d(3).double()
    reference(x)
    assert torch.allclose(bn.running_mean, reference.running_mean)
    assert torch.allclose(bn.running_var, reference.running_var)
    assert check_invertible(bn, x, atol=1e-12) < 1e-12  # eval mode: running statistics


def test_invertible_batchnorm_errors():
    with pytest.raises(ConfigError, match="eps_i"):
        InvertibleBatchNorm2d(3, eps_i=0)
    bn = InvertibleBatchNorm2d(3)
    with pytest.raises(InvertibilityError, match="forward first"):
        bn.inverse(torch.randn(1, 3, 2, 2))
    with pytest.raises(ShapeError):
        bn(torch.randn(1, 4, 2, 2))


def test_invertible_leaky_relu():
    layer = InvertibleLeakyReLU(0.25)
    x = x64(1000)
    assert torch.equal(layer(x), torch.nn.functional.leaky_relu(x, 0.25))
    assert (layer.inverse(layer(x)) - x).abs().max() < 1e-15
    with pytest.raises(ConfigError, match="not invertible"):
        InvertibleLeakyReLU(0.0)


def test_invertible_conv_and_sequential():
    torch.manual_seed(0)
    conv = InvertibleConv2d(4).double()
    assert check_invertible(conv, x64(2, 4, 5, 5)) < 1e-12
    seq = InvertibleSequential(
        InvertibleBatchNorm2d(4), InvertibleLeakyReLU(0.5), InvertibleConv2d(4)
    ).double()
    assert check_invertible(seq, x64(2, 4, 5, 5)) < 1e-12
    with pytest.raises(InvertibilityError, match="no exact inverse"):
        InvertibleSequential(torch.nn.ReLU())
    with pytest.raises(ShapeError):
        InvertibleConv2d(3)


def layer_chain():
    torch.manual_seed(0)
    return RevSequence(
        [
            InvertibleConv2d(4),
            InvertibleBatchNorm2d(4),
            InvertibleLeakyReLU(0.5),
            BatchPool(2),
            InvertibleConv2d(4),
            InvertibleBatchNorm2d(4),
            ChannelPool(2),
            InvertibleLeakyReLU(0.5),
        ]
    ).double()


def test_layerwise_chain_gradients_and_buffers_match_autograd():
    fast = layer_chain()
    plain = copy.deepcopy(fast)
    plain.memory_free = False
    worst = check_grad_parity(fast, plain, x64(4, 4, 8, 8), atol=1e-10)
    assert worst < 1e-10
    bn = fast.blocks[1]
    assert bn.num_batches_tracked.item() == 1


def test_layerwise_chain_float32_drift_is_small():
    fast = layer_chain().float()
    plain = copy.deepcopy(fast)
    plain.memory_free = False
    worst = check_grad_parity(fast, plain, x64(4, 4, 8, 8).float(), atol=1e-3)
    assert worst < 1e-3


@pytest.mark.parametrize(
    "layer",
    [InvertibleBatchNorm2d(3, eps_i=0.1), InvertibleLeakyReLU(0.3), ChannelPool(2), BatchPool(2)],
    ids=["batchnorm", "leaky_relu", "channel_pool", "batch_pool"],
)
@pytest.mark.parametrize("training", [True, False])
def test_analytic_backward_from_output_matches_autograd(layer, training):
    layer = copy.deepcopy(layer).double().train(training)
    if isinstance(layer, InvertibleBatchNorm2d):
        with torch.no_grad():  # negative and zero gamma: the |gamma| gradient's sign
            layer.weight.copy_(torch.tensor([1.5, -0.7, 0.0]))
            layer.bias.copy_(torch.tensor([0.3, -0.2, 0.0]))
            layer.running_var.fill_(2.0)
    x = (x64(4, 3, 4, 4) * 2 + 0.5).requires_grad_()
    y = layer(x)
    buffers = [b.clone() for b in layer.buffers()]
    grad_y = x64(*y.shape) + 1
    params = list(layer.parameters())
    expected = torch.autograd.grad(y, [x, *params], grad_y)
    x_rebuilt, grad_x, param_grads = layer.backward_from_output(y.detach(), grad_y)
    assert (x_rebuilt - x).abs().max() < 1e-12
    assert (grad_x - expected[0]).abs().max() < 1e-12
    assert [p for p, _ in param_grads] == params
    for (_, grad), reference in zip(param_grads, expected[1:], strict=True):
        assert (grad - reference).abs().max() < 1e-12
    assert all(torch.equal(a, b) for a, b in zip(buffers, layer.buffers(), strict=True))


def test_replaying_batch_stats_reuses_the_forward_statistics_and_updates_nothing():
    bn = InvertibleBatchNorm2d(3).double()
    x = x64(4, 3, 4, 4) * 3 + 1
    y = bn(x)
    buffers = [b.clone() for b in bn.buffers()]
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = torch.sqrt(x.var(dim=(0, 2, 3), unbiased=False, keepdim=True) + bn.eps)
    z = x64(2, 3, 4, 4)
    with replaying_batch_stats(bn):
        replayed, other = bn(x), bn(z)
    assert (replayed - y).abs().max() < 1e-12
    expected = bn.scale().view(1, 3, 1, 1) * (z - mean) / std + bn.bias.view(1, 3, 1, 1)
    assert (other - expected).abs().max() < 1e-12
    assert all(torch.equal(a, b) for a, b in zip(buffers, bn.buffers(), strict=True))
    assert not bn.replaying
