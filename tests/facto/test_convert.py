import pytest
import torch
from torch import nn

from smallfoot.errors import ConfigError
from smallfoot.facto import (
    CompactBatchNorm2d,
    FactoConv2d,
    FactoLinear,
    MaskMaxPool2d,
    MaskReLU,
    OffsetMaxPool2d,
    PooledScale,
    convert,
    factorized_layers,
    merge_and_redraw,
    set_low_rank,
    trainable_elements,
)
from smallfoot.memory import measure
from smallfoot.models import build_model

TOL = dict(rtol=1e-10, atol=1e-10)

MODELS = [
    ("vgg11", (1, 32, 32), dict(width=0.125)),
    ("cnn4", (1, 16, 16), dict(batch_norm=False, widths=(4, 8, 8, 8))),
    ("fixup_resnet18", (3, 16, 16), dict(width=4)),
]


def build(name, shape, opts, seed=0):
    torch.manual_seed(seed)
    model = build_model(name, shape, 10, **opts).double()
    if name.startswith("fixup"):
        # Fixup zero-initialises branch ends and the classifier; give them values to compare
        with torch.no_grad():
            for p in model.parameters():
                if p.abs().max() == 0:
                    p.normal_(0, 0.1)
    return model


@pytest.mark.parametrize(("name", "shape", "opts"), MODELS)
@pytest.mark.parametrize("apply_ratio", [0.6, 1.0])
def test_conversion_and_merge_redraw_preserve_the_function(name, shape, opts, apply_ratio):
    model = build(name, shape, opts)
    x = torch.randn(3, *shape, dtype=torch.float64)
    expected = model(x)
    conversion = convert(model, inr=0.3, kernel=2, apply_ratio=apply_ratio)
    assert conversion.model is model
    torch.testing.assert_close(model(x), expected, **TOL)
    with torch.no_grad():
        for layer in factorized_layers(model):
            layer.magnitude.normal_(0, 0.1)
    moved = model(x)
    merge_and_redraw(model, torch.Generator().manual_seed(1))
    torch.testing.assert_close(model(x), moved, **TOL)
    model(x).sum().backward()
    for layer in factorized_layers(model):
        assert layer.magnitude.grad is not None and layer.weight.grad is None


def test_first_layer_is_never_converted_and_apply_ratio_counts_layers():
    model = build(*MODELS[0])  # vgg11 without BN: 8 convs + 1 linear
    rows = convert(model, apply_ratio=0.6).layers
    weighted = [r for r in rows if r.kind in ("conv", "linear")]
    assert len(weighted) == 9 and not weighted[0].converted
    assert weighted[0].detail == "first layer"
    assert [r.converted for r in weighted] == [False] + [True] * 5 + [False] * 3  # round(5.4)
    model = build(*MODELS[0])
    rows = convert(model, apply_ratio=1.0).layers
    assert all(r.converted for r in rows[1:])  # every ReLU and pool too
    assert isinstance(model[-1], FactoLinear) and not isinstance(model[0], FactoConv2d)
    assert sum(isinstance(m, MaskReLU) for m in model) == 8
    assert sum(isinstance(m, MaskMaxPool2d) for m in model) == 5


def test_report_ratios_follow_table_2_and_trainable_counts():
    model = build(*MODELS[0])
    rows = convert(model, inr=0.3, kernel=2, apply_ratio=1.0).layers
    for row, module in zip(rows, [m for _, m in model.named_children()], strict=False):
        if isinstance(module, FactoConv2d):
            assert row.saved_ratio == pytest.approx(1 - module.rank / (module.in_channels * 4))
            assert row.trainable_after == module.magnitude.numel() + module.bias.numel()
    linear = next(r for r in rows if r.kind == "linear")
    assert linear.saved_ratio == pytest.approx(1 - model[-1].rank / model[-1].in_features)
    assert trainable_elements(model) == sum(r.trainable_after for r in rows)
    assert "converted" in str(convert(build(*MODELS[1]), apply_ratio=0.6))


def test_fixup_scaling_layers_and_overlapping_pool():
    model = build("fixup_resnet18", (3, 64, 64), dict(width=4))
    rows = convert(model, kernel=2, apply_ratio=1.0).layers
    assert sum(isinstance(m, PooledScale) for m in model.modules()) == 8
    pool = next(r for r in rows if r.kind == "maxpool")
    assert pool.converted and "offsets" in pool.detail
    assert isinstance(model.maxpool, OffsetMaxPool2d)


def test_batch_norm_is_compacted_in_the_converted_range_only():
    model = build_model("vgg11_bn", (3, 32, 32), 10, width=0.125)
    rows = convert(model, apply_ratio=0.6).layers
    weighted = [r for r in rows if r.kind in ("conv", "linear")]
    last = max(i for i, r in enumerate(rows) if r.kind == "conv" and r.converted)
    after = next(i for i, r in enumerate(rows) if i > last and r.kind == "conv")
    norms = [(i, r) for i, r in enumerate(rows) if r.kind == "batchnorm"]
    # each BN normalises the conv before it: compacted up to the one after the last converted
    assert [r.converted for _, r in norms] == [i < after for i, _ in norms]
    assert weighted[0].converted is False and norms[0][1].converted  # after the input layer
    assert all(r.saved_ratio == 0.75 for _, r in norms if r.converted)
    compact = [m for m in model.modules() if isinstance(m, CompactBatchNorm2d)]
    assert len(compact) == sum(r.converted for _, r in norms)
    kept = build_model("vgg11_bn", (3, 32, 32), 10, width=0.125)
    rows = convert(kept, apply_ratio=0.6, batchnorm=False).layers
    assert not any(r.converted for r in rows if r.kind == "batchnorm")


def test_meter_sees_80_percent_fewer_saved_bytes_on_vgg11_bn():
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(10, (4,))
    before = measure(build_model("vgg11_bn", (3, 32, 32), 10), (x, y)).saved_activations
    model = build_model("vgg11_bn", (3, 32, 32), 10)
    convert(model)  # the defaults: INR 0.3, k 2, apply ratio 0.6
    after = measure(model, (x, y)).saved_activations
    assert 1 - after / before >= 0.8


def test_full_rank_conversion_trains_w_and_switches():
    model = build(*MODELS[1])
    convert(model, apply_ratio=1.0, low_rank=False)
    layers = factorized_layers(model)
    assert all(layer.weight.requires_grad and not layer.low_rank for layer in layers)
    set_low_rank(model, True)
    assert all(not layer.weight.requires_grad and layer.low_rank for layer in layers)
    assert all(m.low_rank for m in model.modules() if isinstance(m, PooledScale))


def test_bad_arguments_raise_config_errors():
    model = build(*MODELS[1])
    with pytest.raises(ConfigError, match="apply_ratio"):
        convert(model, apply_ratio=0.0)
    with pytest.raises(ConfigError, match="inr"):
        convert(model, inr=0.0)
    with pytest.raises(ConfigError, match="kernel"):
        convert(model, kernel=0)
    convert(model)
    with pytest.raises(ConfigError, match="already converted"):
        convert(model)
    with pytest.raises(ConfigError, match="at least two"):
        convert(nn.Sequential(nn.Linear(3, 2)))


def test_meter_sees_the_promised_reduction_on_vgg11():
    from smallfoot.memory import measure

    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(10, (4,))
    base = build_model("vgg11", (3, 32, 32), 10, width=0.125)
    model = build_model("vgg11", (3, 32, 32), 10, width=0.125)
    convert(model, inr=0.3, kernel=2, apply_ratio=1.0)
    sgd = lambda m: torch.optim.SGD(  # noqa: E731
        [p for p in m.parameters() if p.requires_grad], lr=0.01, momentum=0.9
    )
    before = measure(base, (x, y), optimizer=sgd(base))
    after = measure(model, (x, y), optimizer=sgd(model))
    # what the formulas promise: pooled D X per factorized layer, one bit per ReLU/pool input
    expected = after.by_module["(loss)"]["saved_activations"]
    z = torch.zeros(4, 3, 32, 32)
    for module in model:
        if isinstance(module, FactoConv2d):
            expected += 4 * module.rank * -(-z.shape[2] // 2) * -(-z.shape[3] // 2) * 4
        elif isinstance(module, FactoLinear):
            expected += 4 * module.rank * 4
        elif isinstance(module, (MaskReLU, MaskMaxPool2d)):
            expected += -(-z.numel() // 8)
        with torch.no_grad():
            z = module(z)
    assert after.saved_activations == expected
    assert 1 - after.saved_activations / before.saved_activations > 0.9
    assert after.optimizer_state == 4 * trainable_elements(model)
    assert after.optimizer_state < 0.1 * before.optimizer_state


def test_apply_ratio_counts_conv_and_scaling_layers_only():
    def net():
        convs = [nn.Conv2d(1 if i == 0 else 4, 4, 3, padding=1) for i in range(4)]
        return nn.Sequential(
            *[layer for conv in convs for layer in (conv, nn.ReLU())],
            nn.Flatten(),
            nn.Linear(4 * 6 * 6, 16),
            nn.ReLU(),
            nn.Linear(16, 3),
        )

    def converted(apply_ratio):
        rows = convert(net(), apply_ratio=apply_ratio).layers
        return [r.converted for r in rows if r.kind in ("conv", "linear")]

    # 4 convs: round(0.6 * 4) = 2 after the input layer; the linear layers do not count
    assert converted(0.6) == [False, True, True, False, False, False]
    assert converted(0.9) == [False, True, True, True, True, True]  # all convs: the head too
    # a model without conv or scaling layers counts its linear layers
    mlp = nn.Sequential(*[nn.Linear(8, 8) for _ in range(5)])
    rows = convert(mlp, apply_ratio=0.6).layers
    assert [r.converted for r in rows] == [False, True, True, True, False]


def test_conversion_runs_on_fake_tensors_for_estimates():
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    with FakeTensorMode():
        model = build_model("fixup_resnet18", (3, 16, 16), 10, width=4)
        convert(model, apply_ratio=1.0)
    scales = [m for m in model.modules() if isinstance(m, PooledScale)]
    assert scales and all(isinstance(m.weight, FakeTensor) for m in scales)


@pytest.mark.parametrize("apply_ratio", [0.3, 0.6])
def test_apply_ratio_counts_the_scaling_layers_of_a_fixup_resnet(apply_ratio):
    model = build_model("fixup_resnet18", (3, 16, 16), 10, width=4)
    rows = convert(model, apply_ratio=apply_ratio).layers
    counted = [r for r in rows if r.kind in ("conv", "scale")]
    converted = [r for r in counted if r.converted]
    assert len(converted) == round(apply_ratio * len(counted))
    assert {r.kind for r in converted} == {"conv", "scale"}
    # input side first: the converted ones are the first after the input layer
    assert [r.converted for r in counted] == [False] + [True] * len(converted) + [False] * (
        len(counted) - 1 - len(converted)
    )
