"""The plan benchmark's pieces on the smallest configurations, and its claims from rows."""

import torch
from benchmarks.plan import plan_claims, saved_bytes, torch_budget_row, torch_peak
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
    baseline = {"peak": 1000, "saved_activations": 900, "resident": 300, "gradients": 150}
    # the baseline's other bytes at its peak (1000 - 900) understate what every step holds
    assert torch_peak(baseline, saved=10) == (450, 450)  # resident + every gradient
    assert torch_peak(baseline, saved=600) == (900, 900)  # resident + every saved tensor
    # where the baseline's peak holds more than the floor, it bounds the compiled step
    baseline = {"peak": 1000, "saved_activations": 200, "resident": 300, "gradients": 150}
    assert torch_peak(baseline, saved=100) == (900, 450)


def row(**changes):
    base = {
        "torch_fits": True, "checkpoint_fits": True, "ours_fits": True, "ours_overhead": 0.0,
        "torch_overhead": 0.1, "plan_seconds": 30.0,
    }  # fmt: skip
    return {**base, **changes}


def test_claims_from_rows():
    rows = [
        row(),
        row(ours_overhead=0.3, torch_overhead=0.1),
        row(torch_fits=False, checkpoint_fits=False, plan_seconds=70.0),
    ]
    claims = {c.id: c for c in plan_claims(rows, "smallfoot bench plan")}
    assert claims["plan.fits_where_recompute_cannot"].measured == 100.0
    assert claims["plan.fits_where_recompute_cannot"].met
    assert claims["plan.overhead_vs_torch_budget"].measured == 20.0
    assert not claims["plan.overhead_vs_torch_budget"].met
    assert claims["plan.seconds"].measured == 70.0 and not claims["plan.seconds"].met
