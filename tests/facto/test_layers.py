import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from smallfoot.errors import ConfigError, ShapeError
from smallfoot.facto import (
    CompactBatchNorm2d,
    CompactBatchNormFunction,
    FactoConv2d,
    FactoLinear,
    MaskMaxPool2d,
    MaskReLU,
    OffsetMaxPool2d,
    PooledScale,
    draw_direction,
)
from smallfoot.facto.layers import mean_pool, quantize_per_channel, upsample
from smallfoot.models.fixup import Scale

TOL = dict(rtol=1e-10, atol=1e-10)


def saved_activation_bytes(fn, *params_and_buffers):
    """Bytes of tensors saved for backward by ``fn()``, excluding the given tensors' storages."""
    excluded = {t.untyped_storage().data_ptr() for t in params_and_buffers}
    seen, total = set(), 0

    def pack(t):
        nonlocal total
        ptr = t.untyped_storage().data_ptr()
        if ptr not in excluded and ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total, out


def random_facto_conv(in_c=6, out_c=5, kernel_size=3, k=1, seed=0, **conv):
    torch.manual_seed(seed)
    layer = FactoConv2d(in_c, out_c, kernel_size, inr=0.5, compression_kernel=k, **conv).double()
    with torch.no_grad():
        layer.magnitude.normal_()  # a non-zero M so that Omega != W
        layer.bias.normal_()
    return layer


def reference_conv_grads(layer, x, grad_y):
    """Autograd on (W + M D) * X; for k > 1 dL/dM from the pooled-then-upsampled D * X."""
    x = x.detach().requires_grad_()
    m = layer.magnitude.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()
    geometry = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation)
    k = layer.compression_kernel
    if k == 1:
        omega = layer.weight + (m @ layer.direction.flatten(1)).view_as(layer.weight)
        y = F.conv2d(x, omega, b, **geometry)
        y.backward(grad_y)
        return y, x.grad, m.grad, b.grad
    omega = layer.weight + (m.detach() @ layer.direction.flatten(1)).view_as(layer.weight)
    y = F.conv2d(x, omega, b, **geometry)
    z = F.conv2d(x.detach(), layer.direction, None, **geometry)
    z_tilde = upsample(mean_pool(z, k), k, tuple(z.shape[-2:]))
    through_m = F.conv2d(z_tilde, m[:, :, None, None])  # M_filter * (D_filter * X)~
    (y * grad_y).sum().backward()
    (through_m * grad_y).sum().backward()
    return y, x.grad, m.grad, b.grad


CONV_CASES = [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(3, 2), dilation=2),
    dict(kernel_size=1),
]


@pytest.mark.parametrize("conv", CONV_CASES)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_facto_conv_gradients_match_autograd_reference(conv, k):
    layer = random_facto_conv(k=k, **conv)
    x = torch.randn(3, 6, 9, 11, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    grad_y = torch.randn_like(y)
    y.backward(grad_y)
    y_ref, gx, gm, gb = reference_conv_grads(layer, x, grad_y)
    torch.testing.assert_close(y, y_ref, **TOL)
    torch.testing.assert_close(x.grad, gx, **TOL)
    torch.testing.assert_close(layer.magnitude.grad, gm, **TOL)
    torch.testing.assert_close(layer.bias.grad, gb, **TOL)
    assert layer.weight.grad is None and not layer.weight.requires_grad
    assert not layer.direction.requires_grad


def test_pooled_gradient_differs_from_exact_one():
    # k > 1 is lossy: the M gradient is not the exact one (otherwise the test above is vacuous)
    layer = random_facto_conv(k=2, kernel_size=3, padding=1)
    x = torch.randn(2, 6, 8, 8, dtype=torch.float64)
    grad = torch.randn(2, 5, 8, 8, dtype=torch.float64)
    layer(x).backward(grad)
    lossy = layer.magnitude.grad.clone()
    layer.magnitude.grad = None
    layer.compression_kernel = 1
    layer(x).backward(grad)
    assert (lossy - layer.magnitude.grad).abs().max() > 1e-3


def test_facto_linear_gradients_match_autograd_reference():
    torch.manual_seed(1)
    layer = FactoLinear(12, 7, inr=0.25).double()
    with torch.no_grad():
        layer.magnitude.normal_()
    assert layer.rank == 3 and layer.direction.shape == (3, 12)
    x = torch.randn(4, 5, 12, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    grad_y = torch.randn_like(y)
    y.backward(grad_y)
    x_ref = x.detach().requires_grad_()
    m = layer.magnitude.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()
    y_ref = F.linear(x_ref, layer.weight + m @ layer.direction, b)
    y_ref.backward(grad_y)
    torch.testing.assert_close(y, y_ref, **TOL)
    torch.testing.assert_close(x.grad, x_ref.grad, **TOL)
    torch.testing.assert_close(layer.magnitude.grad, m.grad, **TOL)
    torch.testing.assert_close(layer.bias.grad, b.grad, **TOL)
    assert layer.weight.grad is None


@pytest.mark.parametrize("k", [1, 2, 3])
def test_conv_saves_only_pooled_direction_features(k):
    layer = FactoConv2d(8, 16, 3, padding=1, inr=0.25, compression_kernel=k)
    x = torch.randn(4, 8, 10, 10, requires_grad=True)
    nbytes, _ = saved_activation_bytes(lambda: layer(x), *layer.parameters(), *layer.buffers())
    side = math.ceil(10 / k)
    assert nbytes == 4 * layer.rank * side * side * 4  # B x C_R x H/k x W/k float32
    full = 4 * 8 * 10 * 10 * 4
    if k > 1 and 10 % k == 0:
        assert 1 - nbytes / full == pytest.approx(1 - layer.rank / (8 * k * k))


def test_linear_saves_only_direction_features():
    layer = FactoLinear(40, 10, inr=0.3)
    x = torch.randn(5, 40, requires_grad=True)
    nbytes, _ = saved_activation_bytes(lambda: layer(x), *layer.parameters(), *layer.buffers())
    assert nbytes == 5 * 12 * 4 and 1 - nbytes / (5 * 40 * 4) == pytest.approx(1 - 12 / 40)


def test_direction_rows_have_norm_alpha_and_the_paper_variance():
    d = draw_direction(30, 1000, torch.Generator().manual_seed(0))
    alpha = (1000 / 30) ** 0.25
    torch.testing.assert_close(d.norm(dim=1), torch.full((30,), alpha))
    assert d.var().item() == pytest.approx(math.sqrt(1 / (30 * 1000)), rel=0.05)


def test_merge_and_redraw_keep_the_function_and_reset_m():
    layer = random_facto_conv(kernel_size=3, padding=1)
    x = torch.randn(2, 6, 7, 7, dtype=torch.float64)
    before = layer(x)
    old_direction = layer.direction.clone()
    layer.merge_and_redraw_(torch.Generator().manual_seed(3))
    torch.testing.assert_close(layer(x), before, **TOL)
    assert layer.magnitude.abs().max() == 0
    assert not torch.equal(layer.direction, old_direction)


def test_full_rank_mode_is_a_plain_conv_and_switching_back_merges():
    layer = random_facto_conv(kernel_size=3, padding=1)
    x = torch.randn(2, 6, 7, 7, dtype=torch.float64)
    low = layer(x)
    layer.set_low_rank(False)
    assert layer.weight.requires_grad and layer.magnitude.abs().max() == 0
    plain = nn.Conv2d(6, 5, 3, padding=1).double()
    plain.load_state_dict({"weight": layer.weight, "bias": layer.bias})
    torch.testing.assert_close(layer(x), low, **TOL)
    torch.testing.assert_close(layer(x), plain(x), rtol=0, atol=0)


def test_facto_conv_rejects_grouped_and_bad_options():
    with pytest.raises(ConfigError, match="groups"):
        FactoConv2d.from_conv(nn.Conv2d(4, 4, 3, groups=2), inr=0.5)
    with pytest.raises(ConfigError, match="inr"):
        FactoConv2d(4, 4, 3, inr=1.5)
    with pytest.raises(ConfigError, match="compression kernel"):
        FactoConv2d(4, 4, 3, compression_kernel=0)


def test_mask_relu_gives_exactly_relu_gradients_and_saves_bits():
    x = torch.randint(-3, 4, (3, 5, 7, 9), dtype=torch.float64).requires_grad_()  # exact zeros
    x_ref = x.detach().clone().requires_grad_()
    grad = torch.randn(3, 5, 7, 9, dtype=torch.float64)
    relu = MaskReLU()
    y = relu(x)
    y.backward(grad)
    torch.relu(x_ref).backward(grad)
    assert torch.equal(y, torch.relu(x_ref)) and torch.equal(x.grad, x_ref.grad)
    nbytes, _ = saved_activation_bytes(lambda: relu(x))
    assert nbytes == math.ceil(x.numel() / 8)


@pytest.mark.parametrize("kernel", [2, 3, (2, 3)])
def test_mask_max_pool_gives_exactly_max_pool_gradients(kernel):
    # small integers make ties frequent; 11 x 13 leaves rows/columns outside every window
    x = torch.randint(0, 3, (2, 4, 11, 13), dtype=torch.float64).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    pool = MaskMaxPool2d.from_pool(nn.MaxPool2d(kernel))
    y = pool(x)
    y_ref = F.max_pool2d(x_ref, kernel)
    grad = torch.randn_like(y)
    y.backward(grad)
    y_ref.backward(grad)
    assert torch.equal(y, y_ref) and torch.equal(x.grad, x_ref.grad)
    nbytes, _ = saved_activation_bytes(lambda: pool(x))
    assert nbytes == math.ceil(x.numel() / 8)
    assert pool(x).grad_fn.saved_tensors[0].dtype == torch.uint8


def test_mask_max_pool_refuses_overlapping_windows_and_other_ranks():
    with pytest.raises(ConfigError, match="non-overlapping"):
        MaskMaxPool2d.from_pool(nn.MaxPool2d(3, 2, 1))
    with pytest.raises(ShapeError):
        MaskMaxPool2d(2)(torch.randn(4, 6, 6))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pooled_scale_matches_reference(k):
    scale = Scale().double()
    with torch.no_grad():
        scale.weight.fill_(1.7)
    pooled = PooledScale.from_scale(scale, k)
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64, requires_grad=True)
    grad = torch.randn_like(x)
    y = pooled(x)
    y.backward(grad)
    x_ref = x.detach().clone().requires_grad_()
    s = scale.weight.detach().clone().requires_grad_()
    x_tilde = upsample(mean_pool(x_ref.detach(), k), k, (7, 8))
    (x_ref * s.detach() * grad).sum().backward()
    (x_tilde * s * grad).sum().backward()
    torch.testing.assert_close(y, scale(x), **TOL)
    torch.testing.assert_close(x.grad, x_ref.grad, **TOL)
    torch.testing.assert_close(pooled.weight.grad, s.grad, **TOL)
    nbytes, _ = saved_activation_bytes(lambda: pooled(x), pooled.weight)
    assert nbytes == 2 * 3 * math.ceil(7 / k) * math.ceil(8 / k) * 8


def test_mean_pool_then_upsample_averages_clipped_cells():
    z = torch.arange(5.0).view(1, 1, 1, 5)
    torch.testing.assert_close(
        upsample(mean_pool(z, 2), 2, (1, 5)), torch.tensor([[[[0.5, 0.5, 2.5, 2.5, 4.0]]]])
    )


@pytest.mark.parametrize(
    "pool",
    [
        nn.MaxPool2d(3, 2, 1),
        nn.MaxPool2d(2, 1),
        nn.MaxPool2d(3, 2, 1, ceil_mode=True),
        nn.MaxPool2d((3, 2), (2, 1), (1, 0), dilation=(2, 1)),
    ],
)
def test_offset_max_pool_gives_exactly_max_pool_gradients(pool):
    x = torch.randint(0, 3, (2, 3, 11, 12), dtype=torch.float64).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    offset = OffsetMaxPool2d.from_pool(pool)
    y, y_ref = offset(x), pool(x_ref)
    grad = torch.randint(-4, 5, y.shape, dtype=torch.float64)  # integer sums are exact
    y.backward(grad)
    y_ref.backward(grad)
    assert torch.equal(y, y_ref) and torch.equal(x.grad, x_ref.grad)
    nbytes, _ = saved_activation_bytes(lambda: offset(x))
    assert nbytes == y.numel()  # one uint8 per output element


def batch_norm_pair(momentum=0.1, affine=True, seed=0):
    """An ``nn.BatchNorm2d`` (float64, random affine parameters and running statistics) and
    its compact copy."""
    torch.manual_seed(seed)
    plain = nn.BatchNorm2d(3, momentum=momentum, affine=affine).double()
    with torch.no_grad():
        for t in [*plain.parameters(), plain.running_mean]:
            t.normal_()
        plain.running_var.uniform_(0.5, 2.0)
    return plain, CompactBatchNorm2d.from_batchnorm(plain)


def bn_gradients(fn, x, params, grad_y):
    x = x.clone().requires_grad_()
    y = fn(x)
    grads = torch.autograd.grad(y, [x, *params], grad_y)
    return y.detach(), grads


def test_compact_batch_norm_function_unquantised_equals_autograd():
    torch.manual_seed(0)
    x = torch.randn(5, 3, 6, 7, dtype=torch.float64) * 3 + 1
    weight = torch.randn(3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    grad_y = torch.randn(5, 3, 6, 7, dtype=torch.float64)
    stats = [torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)]
    ref_stats = [t.clone() for t in stats]
    y_ref, ref = bn_gradients(
        lambda x: F.batch_norm(x, *ref_stats, weight, bias, True, 0.1, 1e-5),
        x,
        [weight, bias],
        grad_y,
    )
    y, got = bn_gradients(
        lambda x: CompactBatchNormFunction.apply(x, weight, bias, *stats, 0.1, 1e-5, False),
        x,
        [weight, bias],
        grad_y,
    )
    torch.testing.assert_close(y, y_ref, **TOL)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, **TOL)
    for a, b in zip(stats, ref_stats, strict=True):
        torch.testing.assert_close(a, b, **TOL)


def test_quantisation_error_is_half_a_step():
    torch.manual_seed(0)
    z = torch.randn(4, 3, 5, 5, dtype=torch.float64) * torch.tensor([1.0, 5.0, 0.1]).view(
        1, 3, 1, 1
    )
    q, scale = quantize_per_channel(z)
    assert q.dtype == torch.int8 and q.shape == z.shape and scale.shape == (3,)
    error = (q.double() * scale.view(1, 3, 1, 1) - z).abs().amax((0, 2, 3))
    assert torch.all(error <= scale / 2 + 1e-12)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_compact_batch_norm_module_matches_nn_batch_norm(momentum):
    plain, compact = batch_norm_pair(momentum)
    torch.manual_seed(1)
    for _ in range(2):  # running statistics: updated once per step, as nn.BatchNorm2d
        x = torch.randn(6, 3, 5, 5, dtype=torch.float64) * 2 - 1
        grad_y = torch.randn(6, 3, 5, 5, dtype=torch.float64)
        params = [plain.weight, plain.bias]
        y_ref, ref = bn_gradients(plain, x, params, grad_y)
        y, got = bn_gradients(compact, x, [compact.weight, compact.bias], grad_y)
        torch.testing.assert_close(y, y_ref, **TOL)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(compact, name), getattr(plain, name), **TOL)
        # int8 x_hat: the bias gradient is exact, the others within a percent
        grad_x, grad_w, grad_b = got
        torch.testing.assert_close(grad_b, ref[2], **TOL)
        assert (grad_w - ref[1]).norm() <= 0.01 * ref[1].norm()
        assert (grad_x - ref[0]).norm() <= 0.01 * ref[0].norm()
        assert (grad_x - ref[0]).norm() > 0  # it is the quantised path
    # evaluation: running statistics, nothing updated; no_grad training: updated once
    plain.eval(), compact.eval()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(compact(x), plain(x), **TOL)
    torch.testing.assert_close(compact.running_mean, plain.running_mean, **TOL)
    plain.train(), compact.train()
    with torch.no_grad():
        torch.testing.assert_close(compact(x), plain(x), **TOL)
    torch.testing.assert_close(compact.running_var, plain.running_var, **TOL)
    assert int(compact.num_batches_tracked) == int(plain.num_batches_tracked) == 3


def test_compact_batch_norm_keeps_one_byte_per_element():
    plain, compact = batch_norm_pair()
    x = torch.randn(8, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    buffers = [*compact.parameters(), *compact.buffers()]
    kept, _ = saved_activation_bytes(lambda: compact(x), x, *buffers)
    assert x.numel() <= kept <= x.numel() + 64  # int8 x_hat + two (C,) float64 vectors
    full, _ = saved_activation_bytes(lambda: plain(x), x, *plain.parameters(), *plain.buffers())
    compact.set_low_rank(False)  # full-rank mode is nn.BatchNorm2d
    assert saved_activation_bytes(lambda: compact(x), x, *buffers)[0] == full


def test_compact_batch_norm_without_affine_parameters():
    plain, compact = batch_norm_pair(affine=False)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    grad_y = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    (ref,) = bn_gradients(plain, x, [], grad_y)[1]
    (got,) = bn_gradients(compact, x, [], grad_y)[1]
    assert (got - ref).norm() <= 0.01 * ref.norm()
