"""Benchmark ``manifold``: the paper's W x batch grid through the registry, claims from medians."""

import pytest
from benchmarks.manifold import FULL, QUICK, cell_rows, grid, manifold_claims, row

from smallfoot.config import train_command
from smallfoot.methods import get_method


@pytest.mark.parametrize("setup", [FULL, QUICK])
def test_grid_is_the_papers_cells_with_and_without_the_regulariser(setup):
    rows = grid("fashion-mnist", setup)
    cells = {(r.extra["W"], r.extra["batch"], r.extra["head"]) for r in rows}
    assert len(rows) == len(cells) == 3 * (1 + 2 * 3)
    for r in rows:
        config, command = r.config, train_command(r.config)
        assert r.seeds == setup.seeds and config.batch_size == r.extra["batch"]
        if r.extra["head"] == "wide (vanilla)":
            assert config.model == "cnn4_wide" and config.method == "baseline"
            # the wide head trains at the rate the method gives the bottleneck at that batch
            assert config.lr == pytest.approx(0.05 * config.batch_size / 128)
            assert r.extra["lr"] == config.lr
            continue
        method = get_method("manifold", config.method_options)
        assert method.options.bottleneck_width == r.extra["W"]
        assert method.options.regularize == (r.extra["head"] == "bottleneck + regulariser")
        assert ("--regularize false" in command) != method.options.regularize
        assert f"--bottleneck-width {r.extra['W']}" in command


def fake(head, width, batch, seed, accuracy):
    return row({
        "section": "fashion-mnist", "head": head, "W": width, "batch": batch, "seed": seed,
        "epochs": 2, "test_accuracy": accuracy, "train_accuracy": accuracy + 0.01, "seconds": 1.0,
        "lr_used": 0.002, "memory": {"parameters": 4, "peak": 8}, "command": "smallfoot train",
    })  # fmt: skip


def test_claim_takes_the_worst_cell_of_median_gains():
    rows = []
    for seed, (plain, reg) in enumerate([(0.50, 0.60), (0.55, 0.52), (0.40, 0.58)]):
        rows += [
            fake("bottleneck", 8, 5, seed, plain),
            fake("bottleneck + regulariser", 8, 5, seed, reg),
        ]
    for seed, (plain, reg) in enumerate([(0.80, 0.79), (0.81, 0.80), (0.82, 0.83)]):
        rows += [
            fake("bottleneck", 16, 9, seed, plain),
            fake("bottleneck + regulariser", 16, 9, seed, reg),
        ]
    rows.append(fake("wide (vanilla)", "-", 5, 0, 0.7))
    assert rows[0]["gap %"] == 1.0 and rows[0]["peak bytes"] == 8
    cells = {(c["W"], c["batch"]): c for c in cell_rows(rows)}
    assert cells[(8, 5)]["gain (points)"] == 8.0 and cells[(8, 5)]["wide head %"] == 70.0
    assert cells[(16, 9)]["gain (points)"] == -1.0 and cells[(16, 9)]["wide head %"] is None
    (claim,) = manifold_claims(cell_rows(rows) + rows, "smallfoot bench manifold")
    assert claim.measured == -1.0 and not claim.met and claim.seeds == 3
    assert "1 of 2 cells" in claim.claim and "W=16 batch 9" in claim.claim
    assert "2 epochs, not 200" in claim.claim
