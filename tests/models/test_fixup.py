import pytest
import torch

from smallfoot.errors import ConfigError, ShapeError
from smallfoot.models import build_model, list_models
from smallfoot.models.fixup import Bias, FixupBasicBlock, Scale


def test_registered():
    names = {info.name for info in list_models("fixup_*")}
    assert names == {"fixup_resnet18", "fixup_resnet34"}


@pytest.mark.parametrize(("shape", "size"), [((1, 28, 28), 28), ((3, 64, 64), 2)])
def test_shapes_and_stems(shape, size):
    model = build_model("fixup_resnet18", shape, 7, width=4)
    assert model(torch.randn(2, *shape)).shape == (2, 7)
    has_pool = hasattr(model, "maxpool")
    assert has_pool == (shape[1] >= 64)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_fixup_initialisation():
    model = build_model("fixup_resnet34", (3, 32, 32), 10, width=4)
    blocks = [m for m in model.modules() if isinstance(m, FixupBasicBlock)]
    assert len(blocks) == 16
    assert all(b.conv2.weight.abs().max() == 0 for b in blocks)
    assert model.fc.weight.abs().max() == 0 and model.fc.bias.abs().max() == 0
    # the first branch conv is scaled by L^-1/2: its std is about sqrt(2 / fan) / 4
    w = blocks[-1].conv1.weight
    expected = (2 / (w.shape[0] * 9)) ** 0.5 / 16**0.5
    assert w.std().item() == pytest.approx(expected, rel=0.1)
    # zero-initialised branches: each block starts as relu(shortcut(x))
    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(blocks[1](x), torch.relu(x))


def test_narrow_net_keeps_the_signal_scale_to_the_classifier():
    # stem and shortcuts are He fan-in: the pooled features reach the zero-initialised
    # classifier at the stem's scale, not shrunk by every downsampling (fan-out gave 0.07 rms
    # at width 8, and the net stayed at chance)
    torch.manual_seed(0)
    model = build_model("fixup_resnet18", (1, 32, 32), 10, width=8)
    x = torch.randn(256, 1, 32, 32)
    stem = model.relu(model.bias1(model.conv1(x)))
    features = model.flatten(model.avgpool(model[3:-4](stem)))
    assert stem.pow(2).mean().sqrt() > 0.7
    assert features.pow(2).mean().sqrt() > 0.5 * stem.pow(2).mean().sqrt()


def test_scale_and_bias_layers():
    x = torch.randn(3, 4)
    scale, bias = Scale(), Bias()
    with torch.no_grad():
        scale.weight.fill_(2.0)
        bias.bias.fill_(1.0)
    assert torch.equal(bias(scale(x)), x * 2 + 1)


def test_errors():
    with pytest.raises(ConfigError, match="stem"):
        build_model("fixup_resnet18", (3, 32, 32), 10, stem="tiny")
    with pytest.raises(ShapeError):
        build_model("fixup_resnet18", (32,), 10)
