import torch

from smallfoot.memory import measure
from smallfoot.methods import get_method
from smallfoot.models import build_model
from smallfoot.models.resnet import resnet18


def saved(model, x, y):
    return measure(model, (x, y)).to_dict()["saved_activations"]


def test_saved_activations_flat_in_depth():
    torch.manual_seed(0)
    x, y = torch.randn(2, 1, 16, 16), torch.randint(0, 3, (2,))
    shallow = saved(build_model("revnet18", (1, 16, 16), 3, width=4, blocks_per_stage=2), x, y)
    deep = saved(build_model("revnet18", (1, 16, 16), 3, width=4, blocks_per_stage=8), x, y)
    assert deep <= 1.05 * shallow
    plain2 = saved(resnet18((1, 16, 16), 3, width=4, blocks_per_stage=2), x, y)
    plain8 = saved(resnet18((1, 16, 16), 3, width=4, blocks_per_stage=8), x, y)
    assert plain8 > 2 * plain2


def test_reversible_method_registered():
    method = get_method("reversible")
    assert method.custom_backward
