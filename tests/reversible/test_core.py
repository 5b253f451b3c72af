import copy

import pytest
import torch
from torch import nn

from smallfoot.errors import InvertibilityError, ShapeError
from smallfoot.reversible import (
    ChannelPool,
    InvertibleBatchNorm2d,
    InvertibleConv2d,
    InvertibleLeakyReLU,
    InvertibleSequential,
    RevBlock,
    RevSequence,
    basic_rev_block,
    hybrid_block,
    revnet18,
)
from smallfoot.testing import check_grad_parity, check_invertible


def chain(blocks=3, channels=4, dropout=0.0, memory_free=True):
    torch.manual_seed(0)
    seq = RevSequence([basic_rev_block(channels, dropout) for _ in range(blocks)], memory_free)
    return seq.double()


def test_grad_parity_float64():
    fast = chain()
    plain = copy.deepcopy(fast)
    plain.memory_free = False
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    worst = check_grad_parity(fast, plain, x, atol=1e-10)
    assert worst < 1e-10


def test_bn_running_stats_updated_once():
    fast = chain()
    plain = copy.deepcopy(fast)
    plain.memory_free = False
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    check_grad_parity(fast, plain, x)  # compares buffers too
    bn = fast.blocks[0].f[0]
    assert bn.num_batches_tracked.item() == 1
    assert plain.blocks[0].f[0].num_batches_tracked.item() == 1


def test_dropout_replay_and_global_rng_untouched():
    fast = chain(dropout=0.3)
    plain = copy.deepcopy(fast)
    plain.memory_free = False
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    assert check_grad_parity(fast, plain, x, atol=1e-10) < 1e-10  # the same masks in both
    torch.manual_seed(7)
    fast(x.clone().requires_grad_()).sum().backward()
    after_fast = torch.get_rng_state()
    torch.manual_seed(7)
    plain(x.clone().requires_grad_()).sum().backward()
    assert torch.equal(after_fast, torch.get_rng_state())


def test_double_backward_raises():
    fast = chain()
    out = fast(torch.randn(2, 4, 4, 4, dtype=torch.float64, requires_grad=True)).sum()
    out.backward(retain_graph=True)
    with pytest.raises(InvertibilityError, match="twice"):
        out.backward()


def test_non_invertible_module_in_chain_raises():
    with pytest.raises(InvertibilityError, match="no exact inverse"):
        RevSequence([basic_rev_block(4), nn.Conv2d(4, 4, 3, padding=1)])
    with pytest.raises(InvertibilityError, match="needs invertible F and G"):
        RevBlock(nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1), layerwise=True)


def test_inverse_exact():
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    assert check_invertible(chain(), x) < 1e-10
    assert check_invertible(ChannelPool(2), x) == 0.0
    with pytest.raises(InvertibilityError):
        check_invertible(nn.ReLU(), x)


def test_odd_shapes_raise():
    with pytest.raises(ShapeError):
        basic_rev_block(3)
    with pytest.raises(ShapeError, match="divisible"):
        ChannelPool(2)(torch.randn(1, 1, 5, 5))


def test_revnet18_parity_with_plain_autograd():
    torch.manual_seed(0)
    fast = revnet18((1, 8, 8), 3, width=4).double()
    plain = copy.deepcopy(fast)
    for module in plain.modules():
        if isinstance(module, RevSequence):
            module.memory_free = False
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    assert check_grad_parity(fast, plain, x, atol=1e-10) < 1e-10


def test_torch_compile_default_mode():
    fast = chain(blocks=2).float()
    plain = copy.deepcopy(fast)
    plain.memory_free = False
    compiled = torch.compile(fast)
    x = torch.randn(2, 4, 4, 4)
    xa = x.clone().requires_grad_()
    compiled(xa).sum().backward()
    xb = x.clone().requires_grad_()
    plain(xb).sum().backward()
    assert torch.allclose(xa.grad, xb.grad, atol=1e-5)


def directional_derivative_error(model, x, seed=5, eps=1e-6):
    """Relative error of the gradient along a random direction of the parameters against a
    central finite difference; every evaluation draws the same dropout masks (``seed``)."""
    params = list(model.parameters())
    weights = torch.randn(model(x).shape, dtype=x.dtype, generator=torch.Generator().manual_seed(1))

    def loss():
        torch.manual_seed(seed)
        return (model(x) * weights).sum()

    model.zero_grad(set_to_none=True)
    loss().backward()
    generator = torch.Generator().manual_seed(2)
    direction = [torch.randn(p.shape, dtype=p.dtype, generator=generator) for p in params]
    analytic = sum((p.grad * d).sum() for p, d in zip(params, direction, strict=True)).item()
    with torch.no_grad():
        for p, d in zip(params, direction, strict=True):
            p.add_(eps * d)
        with torch.enable_grad():  # the training path (masks drawn as in training)
            plus = loss().item()
        for p, d in zip(params, direction, strict=True):
            p.sub_(2 * eps * d)
        with torch.enable_grad():
            minus = loss().item()
        for p, d in zip(params, direction, strict=True):
            p.add_(eps * d)
    numeric = (plus - minus) / (2 * eps)
    return abs(analytic - numeric) / abs(numeric)


def test_torch_compile_default_mode_with_dropout():
    """Compiled, the replaying chain still draws its masks from the eager RNG that its
    backward replays: gradients match finite differences and plain autograd on the same
    masks (Inductor's own masks gave errors of 83-316% along a random direction)."""
    fast = chain(blocks=2, dropout=0.3)
    plain = copy.deepcopy(fast)
    plain.memory_free = False
    fast.compile()
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert check_grad_parity(fast, plain, x, atol=1e-10) < 1e-10
    assert directional_derivative_error(fast, x) < 1e-6


def test_torch_compile_fullgraph_refuses_a_replaying_chain():
    fast = chain(blocks=1, dropout=0.3)
    compiled = torch.compile(fast, fullgraph=True)
    with pytest.raises(torch._dynamo.exc.Unsupported, match="disable"):
        compiled(torch.randn(2, 4, 4, 4, dtype=torch.float64, requires_grad=True))


def test_torch_compile_fullgraph():
    fast = chain(blocks=2).float()
    plain = copy.deepcopy(fast)
    plain.memory_free = False
    assert not fast.replay_rng  # no dropout: nothing to replay, nothing breaking the graph
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        compiled = torch.compile(fast, fullgraph=True)
        x = torch.randn(2, 4, 4, 4)
        xa = x.clone().requires_grad_()
        compiled(xa).sum().backward()
    xb = x.clone().requires_grad_()
    plain(xb).sum().backward()
    assert torch.allclose(xa.grad, xb.grad, atol=1e-5)
    for pa, pb in zip(fast.parameters(), plain.parameters(), strict=True):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-5)
    assert fast.blocks[0].f[0].num_batches_tracked.item() == 1


def hybrid_chain(blocks=2, channels=8):
    torch.manual_seed(0)
    return RevSequence([hybrid_block(channels) for _ in range(blocks)]).double()


def test_hybrid_parity_float64_and_bn_once():
    fast = hybrid_chain()
    plain = copy.deepcopy(fast)
    plain.memory_free = False
    x = torch.randn(3, 8, 5, 5, dtype=torch.float64)
    assert check_grad_parity(fast, plain, x, atol=1e-10) < 1e-10
    bns = [m for m in fast.modules() if isinstance(m, InvertibleBatchNorm2d)]
    assert bns and all(bn.num_batches_tracked.item() == 1 for bn in bns)


def test_hybrid_float32_drift():
    fast = hybrid_chain(blocks=4).float()
    plain = copy.deepcopy(fast)
    plain.memory_free = False
    x = torch.randn(3, 8, 5, 5)
    assert check_grad_parity(fast, plain, x, atol=1e-3) < 1e-3


def test_hybrid_backward_never_recomputes_a_whole_branch_with_autograd(monkeypatch):
    """Block-wise backward recomputes F and G with autograd (all their hidden activations
    live at once: the local bottleneck); the hybrid backward runs F and G without gradients
    for the block inverse, except each branch's last layer (an invertible conv, whose graph
    the layer-wise backward then uses instead of evaluating it again), and back-propagates
    through the other layers one at a time, analytically."""
    calls = []
    for cls in (InvertibleBatchNorm2d, InvertibleLeakyReLU, InvertibleConv2d):
        original = cls.forward

        def recording_forward(self, x, original=original):
            calls.append((type(self).__name__, torch.is_grad_enabled()))
            return original(self, x)

        monkeypatch.setattr(cls, "forward", recording_forward)
    fast = hybrid_chain(blocks=1)
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64, requires_grad=True)
    out = fast(x)
    forward_calls = len(calls)
    out.sum().backward()
    assert forward_calls == 6  # F and G once each in the forward pass, 3 layers each
    layer_calls = ["InvertibleBatchNorm2d", "InvertibleLeakyReLU", "InvertibleConv2d"] * 2
    assert [name for name, _ in calls[forward_calls:]] == layer_calls  # the block inverse only
    assert [grad for _, grad in calls[forward_calls:]] == [False, False, True] * 2
    assert x.grad is not None


def test_hybrid_block_with_a_coupling_first_in_its_branches():
    """A branch starting with an invertible conv hands it its exactly known input."""
    torch.manual_seed(0)

    def branch():
        return InvertibleSequential(
            InvertibleConv2d(4), InvertibleBatchNorm2d(4), InvertibleLeakyReLU(0.3)
        )

    fast = RevSequence([RevBlock(branch(), branch(), layerwise=True) for _ in range(2)]).double()
    plain = copy.deepcopy(fast)
    plain.memory_free = False
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    assert check_grad_parity(fast, plain, x, atol=1e-10) < 1e-10
