import pytest
import torch
from torch import nn

from smallfoot.errors import ConfigError
from smallfoot.layerwise import BackwardDropout, InputDropout, Subnet, decision_block


def test_backward_dropout_changes_only_the_gradient():
    torch.manual_seed(0)
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 5, dtype=torch.float64)
    layer = BackwardDropout(0.5)
    y = layer(x)
    torch.testing.assert_close(y, x, rtol=0, atol=0)
    torch.manual_seed(123)
    (y * w).sum().backward()
    torch.manual_seed(123)
    keep = torch.rand_like(x) >= 0.5
    torch.testing.assert_close(x.grad, w * keep / 0.5, rtol=0, atol=0)
    assert 0 < int(keep.sum()) < keep.numel()


def test_backward_dropout_replays_with_the_seed_and_is_off_in_eval():
    x = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    grads = []
    for _ in range(2):
        torch.manual_seed(7)
        BackwardDropout(0.3)(x).sum().backward()
        grads.append(x.grad.clone())
        x.grad = None
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    layer = BackwardDropout(0.9).eval()
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x), rtol=0, atol=0)


def test_in_a_subnet_only_the_unit_gradient_is_dropped():
    torch.manual_seed(0)
    feed = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1)).double()
    unit = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU()).double()
    decision = decision_block((3, 6, 6), 4, convs=1, width=4).double()
    x = torch.randn(5, 1, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 4, (5,))
    results = []
    for p in (0.0, 0.5):
        subnet = Subnet(feed, unit, decision, backward_dropout=BackwardDropout(p)).train()
        subnet.zero_grad()
        torch.manual_seed(3)
        out = subnet(x)
        nn.functional.cross_entropy(out, y).backward()
        results.append(
            (
                out.detach(),
                [p.grad.clone() for p in unit.parameters()],
                [p.grad.clone() for p in decision.parameters()],
            )
        )
    (out0, unit0, dec0), (out1, unit1, dec1) = results
    torch.testing.assert_close(out0, out1, rtol=0, atol=0)
    for a, b in zip(dec0, dec1, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert any(not torch.allclose(a, b) for a, b in zip(unit0, unit1, strict=True))
    assert all(p.grad is None for p in feed.parameters())


def test_input_dropout_decays_per_epoch_and_is_identity_in_eval():
    layer = InputDropout(0.8, decay=0.95)
    layer.set_epoch(3)
    assert layer.p == pytest.approx(0.8 * 0.95**3)
    x = torch.ones(1000)
    torch.manual_seed(0)
    dropped = layer.train()(x)
    assert 0.5 < float((dropped == 0).float().mean()) < 0.8
    torch.testing.assert_close(layer.eval()(x), x)


def test_dropout_probabilities_are_checked():
    with pytest.raises(ConfigError, match="backward dropout"):
        BackwardDropout(1.0)
    with pytest.raises(ConfigError, match="forward dropout"):
        InputDropout(-0.1)
    with pytest.raises(ConfigError, match="decay"):
        InputDropout(0.5, decay=0.0)
