import math

import pytest
import torch
from benchmarks.facto import (
    LAYER_TYPES,
    MODELS,
    facto_claims,
    grid_rows,
    saved_by_type,
    top_k_accuracies,
)

from smallfoot.config import RunConfig, train_command
from smallfoot.facto import convert
from smallfoot.memory import measure
from smallfoot.models import build_model
from smallfoot.runner import run_training


def test_rows_follow_the_paper_protocol_through_the_registry():
    rows = grid_rows(quick=False)
    assert {r.extra["model_label"] for r in rows} == set(MODELS)
    assert all(r.seeds == (0, 1, 2) for r in rows)
    for row in rows:
        config = row.config.validate()
        command = train_command(config)
        assert config.dataset == "fashion-mnist" and config.train_limit is None
        assert "--data-opt pad_to=32" in command
        if config.method == "baseline":
            assert (config.schedule, config.milestones, config.gamma) == (
                "multistep",
                [0.3, 0.6, 0.9],
                0.1,
            )
        else:
            options = config.method_options
            assert (options["inr"], options["kernel"]) == (0.3, 2)
            assert "--method facto" in command and "--apply-ratio" in command
    quick = grid_rows(quick=True)
    assert all(r.seeds == (0,) and r.config.train_limit == 1024 for r in quick)
    assert {r.extra["model_label"] for r in quick} == set(MODELS)


def test_vgg_kaiming_init_is_he_normal_fan_out():
    torch.manual_seed(0)
    model = build_model("vgg11", (1, 32, 32), 10, width=0.5, init="kaiming")
    conv = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][3]
    fan_out = conv.out_channels * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.05)
    assert conv.bias.abs().max() == 0


def test_top_k_of_a_run_rebuilds_the_trained_facto_model(tmp_path):
    config = RunConfig(
        dataset="synthetic",
        model="cnn4",
        method="facto",
        epochs=2,
        batch_size=16,
        out_dir=str(tmp_path),
        run_name="run",
        progress=False,
        measure_memory=False,
        model_options={"widths": [4, 8, 8, 8]},
        data_options={"shape": [1, 8, 8], "num_classes": 10, "size": 64},
        method_options={"apply_ratio": 1.0},
    )
    summary = run_training(config)
    top = top_k_accuracies(tmp_path / "run")
    assert top[1] == pytest.approx(summary["test_accuracy"])  # the same model, the same data
    assert top[1] <= top[5] <= 1


def test_breakdown_by_layer_type_adds_up_to_the_meter_total():
    model = build_model("cnn4", (1, 16, 16), 10, batch_norm=False, widths=(4, 8, 8, 8))
    convert(model)
    x, y = torch.randn(4, 1, 16, 16), torch.randint(10, (4,))
    report = measure(model, (x, y)).to_dict()
    by_type = saved_by_type(model, report)
    assert set(by_type) == set(LAYER_TYPES)
    assert sum(by_type.values()) == report["saved_activations"]
    assert by_type["relu"] > 0 and by_type["conv"] > 0


def run_row(label, model, seed, top1, saved):
    return {"label": label, "model": model, "seed": seed, "top1_pct": top1,
            "top5_pct": top1 + 5, "saved_activations": saved, "command": "smallfoot train"}  # fmt: skip


def test_claims_are_computed_from_the_rows():
    rows = []
    for seed, shift in enumerate((0.0, 0.4, -0.2)):
        rows += [
            run_row("a baseline", "a", seed, 90 + shift, 1000),
            run_row("a facto ratio 0.6", "a", seed, 89.5 + shift, 150),  # 0.5 lower, 85% cut
            run_row("b baseline", "b", seed, 80 + shift, 1000),
            run_row("b facto ratio 0.6", "b", seed, 79.8 + shift, 210),  # 79% cut
            run_row("b facto ratio 1.0", "b", seed, 78 + shift, 100),  # 90% cut, 2 points
        ]
    bn = [
        {"model": "vgg11_bn", "method": "baseline", "compact_bn": None, "saved_activations": 100},
        {"model": "vgg11_bn", "method": "facto", "compact_bn": False, "saved_activations": 50},
        {"model": "vgg11_bn", "method": "facto", "compact_bn": True, "saved_activations": 18},
    ]
    claims = {c.id: c for c in facto_claims(rows + bn, "smallfoot bench facto")}
    cut = claims["facto.cut_at_1pt"]
    # model b: 79% within 1 point (90% costs 2 points) -> the smallest over models is 79
    assert cut.measured == pytest.approx(79.0) and not cut.met and cut.seeds == 3
    assert "b facto ratio 1.0: cut 90.0%, top-1 drop 2.0" in cut.claim
    assert claims["facto.bn_cut"].measured == pytest.approx(82.0) and claims["facto.bn_cut"].met
    assert "50.0% with plain BN" in claims["facto.bn_cut"].claim
    assert facto_claims([], "smallfoot bench facto") == []
