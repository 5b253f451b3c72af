"""The plan benchmark's pieces on the smallest configurations, and its claims from rows."""

import torch
from benchmarks.plan import (
    phase_peak,
    plan_claims,
    saved_bytes,
    torch_budget_row,
    torch_peak,
    training_grid,
    training_rows,
)
from torch import nn


def test_saved_bytes_counts_activations_not_parameters():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(5, 4), torch.randint(3, (5,))
    # the ReLU's output (saved by the ReLU and by the last Linear: one storage, counted once)
    hidden = 5 * 8 * 4
    assert hidden <= saved_bytes(net, x, y) < 2 * hidden + 5 * 3 * 4 * 2


def test_torch_budget_row_without_room_is_a_recompute_miss():
    baseline = {"peak": 10**9, "saved_activations": 10}
    row = torch_budget_row("mlp", (6,), 4, budget=10**6, baseline=baseline)
    assert row["torch_fits"] is False and row["torch_fraction"] < 0


def test_torch_peak_never_drops_below_what_every_step_holds():
    baseline = {"peak": 1000, "saved_activations": 900, "resident": 300, "gradients": 150,
                "optimizer_peak": 450}  # fmt: skip
    # the baseline's other bytes at its peak (1000 - 900) understate what every step holds
    assert torch_peak(baseline, saved=10) == (450, 450)  # resident + every gradient
    assert torch_peak(baseline, saved=600) == (900, 900)  # resident + every saved tensor
    # where the baseline's peak holds more than the floor, it bounds the compiled step
    baseline = {"peak": 1000, "saved_activations": 200, "resident": 300, "gradients": 150,
                "optimizer_peak": 450}  # fmt: skip
    assert torch_peak(baseline, saved=100) == (900, 450)
    # the optimizer step that follows the compiled backward holds its own temporaries
    assert torch_peak({**baseline, "optimizer_peak": 950}, saved=100) == (950, 950)


def test_phase_peak_reads_the_meters_timeline():
    from smallfoot.runner.step import method_step_memory

    report = method_step_memory("mlp", (6,), 8, fake=True)
    peaks = {phase: phase_peak(report, phase) for phase in ("forward", "backward", "optimizer")}
    assert max(peaks.values()) == report.peak
    # the optimizer step holds the weights, gradients and momentum at least
    assert peaks["optimizer"] >= report.parameters + report.gradients + report.optimizer_state


def row(**changes):
    base = {
        "model": "cnn4", "fraction": 0.5, "budget": 1000, "parameters": 100,
        "torch_fits": True, "checkpoint_fits": True, "ours_fits": True, "ours_overhead": 0.0,
        "torch_overhead": 0.1, "plan_seconds": 30.0,
    }  # fmt: skip
    return {**base, **changes}


def test_claims_from_rows():
    rows = [
        row(),
        row(ours_overhead=0.3, torch_overhead=0.1),
        row(torch_fits=False, checkpoint_fits=False, plan_seconds=70.0),
        # the weights alone over the budget: no plan can fit, the cell is named, not counted
        row(torch_fits=False, checkpoint_fits=False, ours_fits=False, model="vgg11_bn",
            fraction=0.1, budget=100 * 2**20, parameters=491 * 2**20),
    ]  # fmt: skip
    claims = {c.id: c for c in plan_claims(rows, "smallfoot bench plan")}
    assert claims["plan.fits_where_recompute_cannot"].measured == 100.0
    assert claims["plan.fits_where_recompute_cannot"].met
    assert (
        "(1 model/budget cells; left out, the weights alone over the budget: vgg11_bn at "
        "10% (weights 491 MiB, budget 100 MiB))" in claims["plan.fits_where_recompute_cannot"].claim
    )
    assert claims["plan.overhead_vs_torch_budget"].measured == 20.0
    assert not claims["plan.overhead_vs_torch_budget"].met
    assert claims["plan.seconds"].measured == 70.0 and not claims["plan.seconds"].met


def plan_row(model, fraction, ours, method, options, shape=(1, 28, 28)):
    return {"model": model, "fraction": fraction, "budget": int(1000 * fraction),
            "shape": list(shape), "batch": 128, "ours": ours, "ours_fits": ours is not None,
            "ours_method": method, "ours_options": options}  # fmt: skip


def test_the_measured_models_chosen_plans_are_trained_once_beside_the_baseline():
    plans = [
        plan_row("cnn4", 0.5, "4 micro-batches of 32", "accumulate", {"micro_batches": 4}),
        plan_row("cnn4", 0.25, "4 micro-batches of 32", "accumulate", {"micro_batches": 4}),
        plan_row("cnn4", 0.1, None, None, None),
        plan_row(
            "resnet18",
            0.5,
            "2 micro-batches of 64",
            "accumulate",
            {"micro_batches": 2},
            shape=(3, 224, 224),
        ),  # fmt: skip
    ]
    grid = training_grid(plans, quick=False)
    assert [row.label for row in grid] == ["cnn4 baseline", "cnn4 4 micro-batches of 32"]
    chosen = grid[1]
    assert chosen.config.method == "accumulate" and chosen.config.batch_size == 128
    assert chosen.config.method_options == {"micro_batches": 4}
    assert chosen.config.dataset == "fashion-mnist" and chosen.extra["budgets"] == [0.5, 0.25]
    records = [
        {**row.extra, "test_accuracy": accuracy, "seconds": 12.0, "command": "smallfoot train",
         "memory": {"peak": peak}}
        for row, accuracy, peak in zip(grid, (0.85, 0.84), (900, 240), strict=True)
    ]  # fmt: skip
    base, ours = training_rows(records, plans)
    assert base["vs_baseline_points"] == 0.0 and base["chosen_at"] == "-"
    assert ours["vs_baseline_points"] == -1.0 and ours["chosen_at"] == "50%/25%"
    assert ours["budget"] == 250 and ours["measured_fits"] is True
    assert (
        ours["section"]
        == "accuracy after training (fashion-mnist, 10000 training images, 2 epochs, seed 0)"
    )
