"""The layerwise benchmark: rows are `smallfoot train` configurations, claims come from rows."""

import pytest
from benchmarks.layerwise import (
    THESIS_SCALE,
    TRAIN_IMAGES,
    grid_rows,
    layerwise_claims,
    thesis_scale_rows,
)

from smallfoot.methods import get_method


def test_rows_are_runnable_configurations_with_the_methods_defaults():
    rows = grid_rows(quick=False)
    variants = {(r.extra["model_label"], r.extra["variant"]) for r in rows}
    assert variants == {
        (model, variant)
        for model in ("cnn4", "vgg13/8")
        for variant in ("full backprop", "bottom-up", "random robin")
    }
    for row in rows:
        config = row.config.validate()
        assert config.dataset == "fashion-mnist" and config.train_limit == TRAIN_IMAGES
        assert row.seeds == (0, 1, 2)
        get_method(config.method, config.method_options)  # every option parses
        if config.method == "baseline":
            assert (config.optimizer, config.lr, config.schedule) == ("adamw", 3e-3, "multistep")
        else:
            assert "unit_lr" not in config.method_options  # the method's own protocol
    quick = grid_rows(quick=True)
    assert all(r.config.dataset == "digits" and r.seeds == (0,) for r in quick)


def run(model, variant, seed, accuracy, peak=None):
    row = {"section": "trained runs", "model": model, "variant": variant, "seed": seed,
           "test_accuracy_pct": accuracy}  # fmt: skip
    if peak is not None:
        row["peak_unit_accuracy_pct"] = peak
    return row


def test_claims_are_medians_over_seeds_and_the_thesis_scale_estimate():
    rows = [run("cnn4", "full backprop", s, a) for s, a in enumerate((90.0, 91.0, 92.0))]
    rows += [run("cnn4", "bottom-up", s, 0, a) for s, a in enumerate((89.0, 90.5, 95.0))]
    rows += [run("vgg13/8", "full backprop", s, a) for s, a in enumerate((93.0, 93.0, 93.0))]
    rows += [run("vgg13/8", "bottom-up", s, 0, a) for s, a in enumerate((92.0, 92.5, 92.9))]
    rows += [run("vgg13/8", "random robin", s, 0, a) for s, a in enumerate((91.0, 90.0, 92.0))]
    rows += [
        {"section": "memory at the thesis' scale (estimate)", "variant": "defaults (no budget)",
         "memory_pct": 41.0, "largest_unit": "unit 2 of 10"},
        {"section": "memory at the thesis' scale (estimate)", "variant": "budget 30%",
         "memory_pct": 38.7, "largest_unit": "unit 2 of 10"},
    ]  # fmt: skip
    claims = {c.id: c for c in layerwise_claims(rows, "smallfoot bench layerwise")}
    assert claims["layerwise.gap"].measured == pytest.approx(91.0 - 90.5)  # cnn4 is worse
    assert claims["layerwise.gap"].met and claims["layerwise.gap"].seeds == 3
    assert claims["layerwise.random_robin"].measured == pytest.approx(2.0)
    assert not claims["layerwise.random_robin"].met
    memory = claims["layerwise.memory_thesis_scale"]
    assert memory.measured == 38.7 and memory.met  # the thesis' budget search when present


def test_thesis_scale_rows_report_the_largest_estimated_unit():
    spec = {**THESIS_SCALE, "model": "vgg11_bn", "label": "small", "batch": 4,
            "model_options": {"width": 0.0625}}  # fmt: skip
    (row,) = thesis_scale_rows(quick=True, spec=spec)
    assert row["estimated"] and row["optimizer"] == "adamw"
    assert row["memory_pct"] == max(row["memory_pct_by_unit"])
    assert len(row["decision_blocks"]) == len(row["memory_pct_by_unit"])
    assert row["decision_blocks"][-1] == "model head"
