import copy

import pytest
import torch
from torch import nn

from smallfoot.reversible import RevSequence, basic_rev_block
from smallfoot.testing import check_grad_parity


class _ScaledGrad(torch.autograd.Function):
    """Identity whose backward is off by a factor: a deliberately wrong custom backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return 1.01 * grad


class _Input(nn.Module):
    """``net`` after an identity whose backward is exact or (``wrong``) 1% off."""

    def __init__(self, net: nn.Module, wrong: bool):
        super().__init__()
        self.net = net
        self.wrong = wrong

    def forward(self, x):
        return self.net(_ScaledGrad.apply(x) if self.wrong else x)


def dropout_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.Linear(8, 3)).double()


def test_stochastic_modules_draw_the_same_masks_in_both_runs():
    net = dropout_net()
    x = torch.randn(5, 6, dtype=torch.float64)
    assert check_grad_parity(net, copy.deepcopy(net), x, atol=1e-12) <= 1e-12


def test_global_rng_left_as_it_was():
    net = dropout_net()
    x = torch.randn(5, 6, dtype=torch.float64)
    before = torch.get_rng_state()
    check_grad_parity(net, copy.deepcopy(net), x)
    assert torch.equal(before, torch.get_rng_state())


def test_catches_a_wrong_backward():
    net = dropout_net()
    x = torch.randn(5, 6, dtype=torch.float64)
    right = _Input(copy.deepcopy(net), wrong=False)
    assert check_grad_parity(right, _Input(copy.deepcopy(net), wrong=False), x) <= 1e-12
    with pytest.raises(AssertionError, match="input grad differs"):
        check_grad_parity(_Input(net, wrong=True), right, x)


def test_catches_a_reversible_chain_that_does_not_replay_its_dropout():
    """A chain recomputing dropout with fresh masks has the right forward and a wrong
    backward; with both runs on the same RNG state only the gradients can differ."""
    torch.manual_seed(0)
    blocks = [basic_rev_block(4, dropout=0.3) for _ in range(2)]
    unreplayed = RevSequence(blocks, replay_rng=False).double()
    plain = copy.deepcopy(unreplayed)
    plain.memory_free = False
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    with pytest.raises(AssertionError, match="grad"):
        check_grad_parity(unreplayed, plain, x)
    replayed = copy.deepcopy(unreplayed)
    replayed.replay_rng = True
    assert check_grad_parity(replayed, plain, x) < 1e-10
