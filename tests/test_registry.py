"""Tests over the whole registry: every registered model builds and takes a real training step,
and every method with a custom backward saves no more activations than plain backprop."""

import pytest
import torch

from smallfoot.methods import list_methods
from smallfoot.models import build_model, list_models
from smallfoot.runner.step import method_step_memory

MODELS = [info.name for info in list_models()]
CUSTOM_BACKWARD = [
    cls.name for cls in list_methods() if cls.custom_backward and not cls.name.startswith("test-")
]
# The reversible method trains the reversible twin of a ResNet-18 whatever --model says, so it
# is held against resnet18; every other method is held against the model it was given.
REFERENCE_MODEL = {"reversible": "resnet18"}


@pytest.mark.parametrize("name", MODELS)
def test_every_model_builds_and_takes_a_step(name):
    torch.manual_seed(0)
    model = build_model(name, (3, 32, 32), 10)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), name
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    optimizer.step()
    after = [p for p in model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True)), name


def test_the_registry_has_custom_backward_methods():
    assert {"reversible", "facto"} <= set(CUSTOM_BACKWARD)


@pytest.mark.parametrize("method", CUSTOM_BACKWARD)
def test_custom_backward_saves_no_more_than_baseline(method):
    model = REFERENCE_MODEL.get(method, "cnn4")
    shape = (3, 32, 32)
    own = method_step_memory(model, shape, 8, method=method, fake=True)
    plain = method_step_memory(model, shape, 8, method="baseline", fake=True)
    assert own.saved_activations <= plain.saved_activations, (method, model)
