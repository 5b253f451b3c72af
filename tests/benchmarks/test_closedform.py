"""The closedform benchmark's pieces: kernel baselines, SGD time to an accuracy, claims."""

import pytest
from benchmarks.closedform import closedform_claims, kernel_rows, seconds_to, toy_rows

from smallfoot.data import load_dataset


def test_kernel_baselines_train_at_the_given_width():
    train = load_dataset("digits", "train", limit=400)
    test = load_dataset("digits", "test", limit=200)
    rows = kernel_rows(train, test, 64)
    assert [r["label"] for r in rows] == ["nystroem + ridge", "rbf-sampler + ridge"]
    for row in rows:
        assert row["width"] == 64 and row["fit_seconds"] >= 0
        assert row["test_accuracy"] > 0.5  # well above 10% chance
        assert "n_components=64" in row["command"]


def test_seconds_to_reads_the_first_epoch_that_reached_it():
    curve = ([1.0, 2.5, 4.0], [0.80, 0.84, 0.86])
    assert seconds_to(curve, 0.83) == 2.5
    assert seconds_to(curve, 0.80) == 1.0
    assert seconds_to(curve, 0.9) is None


def test_toy_rows_are_train_commands_with_the_thesis_nets():
    rows = {row.label: row for row in toy_rows(quick=True)}
    spirals = rows["two-spirals 1.00 turns float64 1 tries"]
    assert spirals.config.model_options == {"widths": [32, 32, 32, 32]}
    assert spirals.config.data_options["turns"] == 1.0
    assert rows["checkerboard 256x3 float64 one-hot"].config.method_options["coding"] == "one-hot"


def test_claims_compare_like_with_like():
    command = "smallfoot bench closedform"
    fashion = [
        {"section": "fashion-mnist", "label": "platonic random", "width": 1024,
         "test_accuracy": 0.86, "fit_seconds": 20.0, "sgd_seconds_to_same_accuracy": 100.0,
         "seconds_ratio_to_sgd": 0.2},
        {"section": "fashion-mnist", "label": "nystroem + ridge", "test_accuracy": 0.87,
         "fit_seconds": 30.0},
        {"section": "fashion-mnist", "label": "rbf-sampler + ridge", "test_accuracy": 0.85,
         "fit_seconds": 10.0},
    ]  # fmt: skip
    toys = [
        {"problem": "checkerboard", "coding": "sign", "dtype": "float32", "label": "board",
         "train_accuracy": 0.96, "test_accuracy": 0.7},
        {"problem": "checkerboard", "coding": "one-hot", "dtype": "float32", "label": "b1",
         "train_accuracy": 0.5, "test_accuracy": 0.5},
        *({"problem": "sine", "dtype": "float64", "tries": 5, "train_loss": loss} for loss in (1e-5, 3e-5, 9e-5)),
    ]  # fmt: skip
    claims = {c.id: c for c in closedform_claims(fashion + toys, command)}
    assert claims["closedform.checkerboard_train"].measured == 96.0  # training, sign coding
    assert claims["closedform.sine_mse"].measured == pytest.approx(3e-5)  # the median
    assert claims["closedform.fashion_85"].met
    assert not claims["closedform.time_vs_sgd"].met
    kernel = claims["closedform.vs_kernel_ridge"]
    assert kernel.measured == pytest.approx(-1.0) and "nystroem" in kernel.claim
