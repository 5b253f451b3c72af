import torch
from benchmarks.facto import (
    LAYER_TYPES,
    MODELS,
    PAPER_POINT,
    build,
    saved_by_type,
    setting_name,
    settings,
)

from smallfoot.memory import measure


def test_settings_cover_the_issue_grid():
    full = settings("full")
    assert len(full) == len(set(full)) == 18 and PAPER_POINT in full
    assert len(settings("one-factor")) == 6 and settings("span")[0] == PAPER_POINT
    assert setting_name(PAPER_POINT) == "INR 0.3, k 2, ratio 0.6"
    assert setting_name(None) == "baseline"


def test_breakdown_by_layer_type_adds_up_to_the_meter_total():
    model = build("cnn4", (1, 16, 16), PAPER_POINT, seed=0, low_rank=True)
    x, y = torch.randn(4, 1, 16, 16), torch.randint(10, (4,))
    report = measure(model, (x, y)).to_dict()
    by_type = saved_by_type(model, report)
    assert set(by_type) == set(LAYER_TYPES)
    assert sum(by_type.values()) == report["saved_activations"]
    assert by_type["relu"] > 0 and by_type["conv"] > 0
    assert set(MODELS) == {"vgg11/8", "cnn4"}
