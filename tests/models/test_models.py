import pytest
import torch

from smallfoot.errors import ConfigError, ShapeError, UnknownNameError
from smallfoot.models import build_model, list_models, parameter_count

# (name, input shape, options): each baseline at its intended input size, kept CPU-cheap.
CASES = [
    ("mlp", (1, 8, 8), {"widths": (32, 16)}),
    ("cnn4", (1, 28, 28), {}),
    ("cnn4", (1, 8, 8), {"widths": (8, 8, 8, 8)}),
    ("vgg11_bn", (3, 32, 32), {"width": 0.125}),
    ("vgg13", (3, 32, 32), {"width": 0.125}),
    ("vgg16_bn", (3, 32, 32), {"width": 0.125}),
    ("vgg11", (3, 64, 64), {"width": 0.0625}),
    ("resnet8", (3, 32, 32), {}),
    ("resnet20", (1, 32, 32), {"width": 8}),
    ("resnet32", (3, 32, 32), {"width": 4}),
    ("resnet56", (3, 32, 32), {"width": 4}),
    ("resnet18", (3, 32, 32), {"width": 8}),
    ("resnet18", (3, 64, 64), {"width": 8}),
]


@pytest.mark.parametrize("name, shape, options", CASES)
def test_forward_backward(name, shape, options):
    torch.manual_seed(0)
    model = build_model(name, shape, 10, **options)
    x = torch.randn(2, *shape)
    out = model(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_paper_sizes_have_the_published_parameter_counts():
    with torch.device("meta"):
        assert parameter_count(build_model("vgg16", (3, 224, 224), 1000)) == 138_357_544
        assert parameter_count(build_model("resnet18", (3, 224, 224), 1000)) == 11_689_512
        assert parameter_count(build_model("resnet20", (3, 32, 32), 10)) < 300_000


def test_depth_option_for_sweeps():
    shallow = build_model("resnet18", (3, 32, 32), 10, width=4, blocks_per_stage=1)
    deep = build_model("resnet18", (3, 32, 32), 10, width=4, blocks_per_stage=3)
    assert len(deep) - len(shallow) == 8


def test_models_are_sequential_for_splitting():
    assert isinstance(build_model("cnn4", (1, 28, 28), 10), torch.nn.Sequential)
    assert isinstance(build_model("resnet8", (3, 32, 32), 10), torch.nn.Sequential)


def test_errors():
    with pytest.raises(UnknownNameError, match="cnn4"):
        build_model("alexnet", (3, 32, 32), 10)
    with pytest.raises(ShapeError, match="pad_to=32"):
        build_model("vgg11", (1, 28, 28), 10)
    with pytest.raises(ShapeError, match="image inputs"):
        build_model("cnn4", (784,), 10)
    with pytest.raises(ConfigError, match="unexpected keyword"):
        build_model("cnn4", (1, 28, 28), 10, depth=3)


def test_list_models():
    names = [info.name for info in list_models()]
    assert {
        "mlp",
        "cnn4",
        "vgg11",
        "vgg13",
        "vgg16",
        "vgg11_bn",
        "vgg13_bn",
        "vgg16_bn",
        "resnet8",
        "resnet20",
        "resnet32",
        "resnet56",
        "resnet18",
    } <= set(names)
    vggs = [info.name for info in list_models("vgg*")]
    assert {"vgg11", "vgg13", "vgg16"} <= set(vggs) and all(name.startswith("vgg") for name in vggs)


@pytest.mark.parametrize("depth", [11, 13, 16])
def test_vgg_names_follow_torchvision(depth):
    """``vggN`` has no batch norm (as the paper and torchvision), ``vggN_bn`` has one per conv."""

    def norms(name):
        model = build_model(name, (3, 32, 32), 10, width=0.125)
        convs = sum(isinstance(m, torch.nn.Conv2d) for m in model)
        return convs, sum(isinstance(m, torch.nn.BatchNorm2d) for m in model)

    convs, plain = norms(f"vgg{depth}")
    assert plain == 0 and norms(f"vgg{depth}_bn") == (convs, convs)
    with pytest.raises(ConfigError, match="batch_norm"):
        build_model(f"vgg{depth}", (3, 32, 32), 10, batch_norm=True)


def test_zero_widths_are_refused():
    with pytest.raises(ConfigError, match="widths must be positive"):
        build_model("mlp", (4,), 10, widths=0)
    with pytest.raises(ConfigError, match="widths must be positive"):
        build_model("cnn4", (1, 8, 8), 10, widths=[0, 0, 0, 0])
    assert len(build_model("mlp", (4,), 10, widths=[])) == 2  # no hidden layer: allowed


def test_mlp_activation_is_relu_or_tanh():
    net = build_model("mlp", (784,), 10, widths=[392, 50], activation="tanh")
    assert [type(m).__name__ for m in net] == [
        "Flatten",
        "Linear",
        "Tanh",
        "Linear",
        "Tanh",
        "Linear",
    ]
    assert isinstance(build_model("mlp", (4,), 3)[2], torch.nn.ReLU)
    with pytest.raises(ConfigError, match="activation='gelu' is not one of relu, tanh"):
        build_model("mlp", (4,), 3, activation="gelu")
