"""Bottleneck heads: the halving cascade, attachment to conv feature extractors, the wide head."""

import pytest
import torch
from torch import nn

from smallfoot.errors import ConfigError, ShapeError
from smallfoot.models import build_model, list_models
from smallfoot.models.bottleneck import (
    BottleneckHead,
    FeatureNet,
    attach_head,
    bottleneck_widths,
    feature_extractor,
    relu_linear,
)


def test_widths_halve_from_k_down_to_w():
    assert bottleneck_widths(256, 16) == [256, 128, 64, 32, 16]
    assert bottleneck_widths(256, 8) == [256, 128, 64, 32, 16, 8]
    assert bottleneck_widths(100, 16) == [100, 50, 25, 16]
    assert bottleneck_widths(16, 16) == [16]
    with pytest.raises(ConfigError, match="head_width"):
        bottleneck_widths(8, 16)
    with pytest.raises(ConfigError, match="at least 1"):
        bottleneck_widths(8, 0)


def test_head_activations_and_logits():
    head = BottleneckHead(20, 10, [16, 8, 4])
    z = torch.randn(3, 20)
    logits, acts = head.forward_activations(z)
    assert logits.shape == (3, 10)
    assert [a.shape[1] for a in acts] == [20, 16, 8, 4]
    assert acts[0] is z
    torch.testing.assert_close(head(z), logits)
    assert all((a >= 0).all() for a in acts[1:])  # ReLU outputs


@pytest.mark.parametrize(
    "name, shape, opts",
    [
        ("cnn4", (1, 28, 28), {"widths": [4, 8, 8, 8]}),
        ("vgg16", (3, 32, 32), {"width": 0.0625}),
    ],
)
def test_attach_bottleneck_to_conv_features(name, shape, opts):
    net = attach_head(name, shape, 10, bottleneck_width=8, head_width=32, **opts)
    assert isinstance(net, FeatureNet) and isinstance(net.head, BottleneckHead)
    assert net.head.widths == [32, 16, 8]
    assert isinstance(list(net.features)[-1], nn.Flatten)
    assert not any(isinstance(m, nn.Linear) for m in net.features.modules())
    out = net(torch.randn(2, *shape))
    assert out.shape == (2, 10)


def test_registered_models_and_wide_head_has_more_parameters():
    names = {info.name for info in list_models("*_bottleneck")} | {
        info.name for info in list_models("*_wide")
    }
    assert {"cnn4_bottleneck", "vgg16_bottleneck", "cnn4_wide", "vgg16_wide"} <= names
    opts = {"widths": [4, 8, 8, 8]}
    narrow = build_model("cnn4_bottleneck", (1, 28, 28), 10, bottleneck_width=8, **opts)
    wide = build_model("cnn4_wide", (1, 28, 28), 10, hidden=256, **opts)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(wide) > count(narrow)
    assert wide(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    # same feature extractor either way
    assert count(narrow.features) == count(wide.features)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ShapeError, match="image inputs"):
        build_model("cnn4_bottleneck", (10,), 3)
    with pytest.raises(ConfigError, match="unknown head"):
        attach_head("cnn4", (1, 28, 28), 10, head="deep")
    with pytest.raises(ConfigError, match="nn.Flatten"):
        feature_extractor(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ConfigError, match="nn.Sequential"):
        feature_extractor(nn.Linear(2, 2))


def test_relu_layers_are_he_initialised():
    torch.manual_seed(0)
    layer = relu_linear(400, 300)
    assert not layer.bias.any()
    assert float(layer.weight.detach().std()) == pytest.approx((2 / 400) ** 0.5, rel=0.05)
