"""Memory by phase (fwd1/fwd2/bwd2/bwd1) from the meter's timeline."""

import pytest
import torch

from smallfoot.errors import ConfigError
from smallfoot.manifold.method import make_regulariser
from smallfoot.manifold.profile import PHASES, profile_phases
from smallfoot.memory import measure
from smallfoot.models.bottleneck import attach_head

OPTS = {"widths": [4, 4, 4, 4], "bottleneck_width": 4}


def batch():
    torch.manual_seed(0)
    return torch.randn(3, 1, 8, 8), torch.tensor([0, 1, 2])


@pytest.mark.parametrize("head", ["bottleneck", "wide"])
def test_phases_are_in_order_and_cover_the_step(head):
    net = attach_head("cnn4", (1, 8, 8), 3, head=head, head_width=16, hidden=32, **OPTS)
    reg = make_regulariser(net.head, None, 1.0, 0.1, 0.01) if head == "bottleneck" else None
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    before = [p.detach().clone() for p in net.parameters()]
    profile = profile_phases(net, batch(), reg, opt)
    assert len(profile.phases) == len(profile.live)
    order = [PHASES.index(p) for p in profile.phases]
    assert order == sorted(order)
    assert set(profile.phases) == set(PHASES)
    assert max(profile.peaks.values()) == profile.report["peak"]
    assert profile.model_bytes == profile.report["parameters"] + profile.report["buffers"]
    for a, b in zip(before, net.parameters(), strict=True):
        assert torch.equal(a, b)  # the meter leaves the model untouched


def test_model_bytes_match_the_meter_on_the_plain_model():
    net = attach_head("cnn4", (1, 8, 8), 3, head_width=16, **OPTS)
    report = measure(net, batch())
    profile = profile_phases(net, batch())
    assert profile.model_bytes == report.parameters + report.buffers


def test_regulariser_needs_a_bottleneck_head():
    net = attach_head("cnn4", (1, 8, 8), 3, head="wide", hidden=8, **OPTS)
    other = attach_head("cnn4", (1, 8, 8), 3, head_width=16, **OPTS)
    with pytest.raises(ConfigError, match="BottleneckHead"):
        profile_phases(net, batch(), make_regulariser(other.head, None, 1.0, 0.1, 0.0))
