import torch
from benchmarks.subspace import FULL, QUICK, Setup, notes_for, row

from smallfoot.subspace import Basis


def test_setups_allow_the_largest_dimension_and_a_pbfgs_stage():
    for setup in (FULL, QUICK):
        samples = setup.samples_per_epoch * setup.sample_epochs
        assert max(setup.dims) <= samples - 1
        assert setup.samples_per_epoch <= -(-setup.train // setup.batch_size)
        assert setup.epochs // 2 - setup.sample_epochs >= 1


def test_rows_and_notes_check_the_targets_on_the_curves():
    basis = Basis(
        torch.zeros(10, 2), torch.zeros(10), torch.ones(2), torch.tensor([0.7, 0.2, 0.1]), []
    )
    memory = {"optimizer_state": 80 + 16}
    sgd_curve = [(1, 70.0, 1.0), (2, 75.0, 2.0), (3, 78.0, 3.0), (4, 80.0, 4.0)]
    fast = [(1, 72.0, 1.0), (2, 80.5, 3.0)]
    slow = [(1, 72.0, 1.0), (2, 79.0, 3.0)]
    rows = [
        row("cnn4", 0.0, "SGD", None, sgd_curve, {"optimizer_state": 40}, 80.0),
        row("cnn4", 0.0, "P-BFGS d=2", basis, fast, memory, 80.0),
        row("cnn4", 0.2, "SGD", None, sgd_curve, {"optimizer_state": 40}, 80.0),
        row("cnn4", 0.2, "P-SGD d=2", basis, slow, memory, 80.0),
    ]
    assert rows[1]["epochs_to_sgd_final"] == 2 and rows[3]["epochs_to_sgd_final"] is None
    assert rows[1]["basis_bytes"] == 80 and rows[1]["state_without_basis_bytes"] == 16
    assert rows[1]["explained_variance"] == 0.9
    notes = notes_for(rows, Setup(train=8, test=8, epochs=4, sample_epochs=1, samples_per_epoch=2))
    assert "cnn4 P-BFGS d=2: met (best 80.5%)" in notes
    assert "cnn4 P-SGD d=2: NOT met (79.0% vs 80.0%)" in notes
