import copy
from types import SimpleNamespace

import pytest
import torch

from smallfoot.errors import ConfigError
from smallfoot.memory import estimate, measure
from smallfoot.methods import get_method
from smallfoot.models import build_model, parameter_count
from smallfoot.reversible import RevSequence
from smallfoot.reversible.method import VARIANT_MODELS
from smallfoot.testing import check_grad_parity

VARIANTS = ["revnet18", "irevnet18", "layerwise18", "hybrid18"]
SMALL_WIDTH = {"revnet18": 4, "irevnet18": 4, "layerwise18": 4, "hybrid18": 8}


def saved(model, x, y):
    return measure(model, (x, y)).to_dict()["saved_activations"]


def plain_copy(model):
    plain = copy.deepcopy(model)
    for module in plain.modules():
        if isinstance(module, RevSequence):
            module.memory_free = False
    return plain


@pytest.mark.parametrize("name", VARIANTS)
def test_model_parity_with_plain_autograd_float64(name):
    torch.manual_seed(0)
    fast = build_model(name, (1, 16, 16), 3, width=SMALL_WIDTH[name]).double()
    x = torch.randn(4, 1, 16, 16, dtype=torch.float64)
    assert check_grad_parity(fast, plain_copy(fast), x, atol=1e-10) < 1e-10


@pytest.mark.parametrize("name", VARIANTS)
def test_saved_activations_flat_in_depth(name):
    """At most 5% growth from 2 to 8 blocks per stage. The invertible BN layers keep their
    batch statistics (2 x C numbers each, counted by the meter), so the images are large
    enough here for that to be the small per-layer cost it is at real sizes."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 1, 32, 32), torch.randint(0, 3, (32,))
    width = SMALL_WIDTH[name]
    shallow = estimate(
        build_model(name, (1, 32, 32), 3, width=width, blocks_per_stage=2), (x, y)
    ).saved_activations
    deep = estimate(
        build_model(name, (1, 32, 32), 3, width=width, blocks_per_stage=8), (x, y)
    ).saved_activations
    assert deep <= 1.05 * shallow


def test_baseline_grows_with_depth():
    x, y = torch.randn(2, 1, 16, 16), torch.randint(0, 3, (2,))
    plain2 = saved(build_model("resnet18", (1, 16, 16), 3, width=4, blocks_per_stage=2), x, y)
    plain8 = saved(build_model("resnet18", (1, 16, 16), 3, width=4, blocks_per_stage=8), x, y)
    assert plain8 > 2 * plain2


def test_resnet18_scale_targets():
    """At ResNet-18 depth with the default (parameter-matched) widths: revnet18 at most 50% of
    the baseline's saved activations, the fully invertible variants at most 20%."""
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    baseline = build_model("resnet18", (3, 32, 32), 10)
    base_saved = estimate(baseline, (x, y)).saved_activations
    limits = {"revnet18": 0.5, "irevnet18": 0.2, "layerwise18": 0.2, "hybrid18": 0.2}
    for name, limit in limits.items():
        model = build_model(name, (3, 32, 32), 10)
        assert abs(parameter_count(model) / parameter_count(baseline) - 1) < 0.15
        assert estimate(model, (x, y)).saved_activations <= limit * base_saved, name


def test_reversible_method_variants():
    assert get_method("reversible").custom_backward
    ctx = SimpleNamespace(input_shape=(1, 16, 16), num_classes=3)
    for variant, model_name in VARIANT_MODELS.items():
        method = get_method("reversible", {"variant": variant, "width": "8"})
        model = method.build_model(ctx)
        expected = build_model(model_name, (1, 16, 16), 3, width=8)
        assert parameter_count(model) == parameter_count(expected)
    with pytest.raises(ConfigError, match="dropout"):
        get_method("reversible", {"variant": "hybrid", "dropout": "0.1"})
    with pytest.raises(ConfigError, match="not one of"):
        get_method("reversible", {"variant": "mystery"})


def test_meter_breakdown_shows_only_chain_outputs_and_the_head():
    """Each reversible stage hands autograd one tensor, its output; the stride-2 transition
    after it saves that same storage (counted once), so nothing else in the body is kept."""
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    report = estimate(build_model("revnet18", (3, 32, 32), 10, width=8), (x, y))
    body = {k: v for k, v in report.by_module.items() if not k.startswith(("head", "(loss)"))}
    assert set(body) == {"stage1", "stage2", "stage3", "stage4"}
    assert all(v["tensors"] == 1 for v in body.values())
    assert body["stage1"]["saved_activations"] == 8 * 8 * 32 * 32 * 4  # the stage-1 output


@pytest.mark.parametrize("name", ["layerwise18", "hybrid18"])
@pytest.mark.parametrize("pooling", ["ccb", "bcb"])
def test_pooling_plan_option(name, pooling):
    torch.manual_seed(0)
    model = build_model(name, (1, 16, 16), 3, width=SMALL_WIDTH[name], pooling=pooling).double()
    chain = model.body.blocks
    kinds = [type(m).__name__ for m in chain if type(m).__name__.endswith("Pool")]
    assert kinds == [{"c": "ChannelPool", "b": "BatchPool"}[p] for p in pooling]
    x = torch.randn(4, 1, 16, 16, dtype=torch.float64)
    assert check_grad_parity(model, plain_copy(model), x, atol=1e-10) < 1e-10
    model.eval()
    with torch.no_grad():  # the head gives every sample its own row back
        assert torch.allclose(model(x)[2:3], model(x[2:3]), atol=1e-12)


def test_bad_pooling_plan_says_what_is_valid():
    with pytest.raises(ConfigError, match="pooling=cbc"):
        build_model("hybrid18", (1, 16, 16), 3, width=8, pooling="cx")
    with pytest.raises(ConfigError, match="--pooling ccb"):
        get_method("reversible", {"variant": "hybrid", "pooling": "ccx"})
    with pytest.raises(ConfigError, match="--variant hybrid"):
        get_method("reversible", {"variant": "revnet", "pooling": "ccb"})
