"""DLDR: orthonormal basis, top-d variance of the trajectory, RAM vs disk, save/load with layout."""

import pytest
import torch
from torch import nn

from smallfoot.errors import ConfigError
from smallfoot.subspace import Basis, TrajectoryStore, dldr, parameter_layout


def low_rank_trajectory(t=30, n=200, rank=4, seed=0):
    """``t`` samples ``w_mean + A c_i + small noise`` with ``A`` of ``rank`` columns: (t, n)."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.linalg.qr(torch.randn(n, rank, generator=g, dtype=torch.float64))[0]
    scales = torch.tensor([8.0, 4.0, 2.0, 1.0], dtype=torch.float64)[:rank]
    coords = torch.randn(t, rank, generator=g, dtype=torch.float64) * scales
    samples = (
        0.5 + coords @ directions.T + 1e-3 * torch.randn(t, n, generator=g, dtype=torch.float64)
    )
    return samples.float()


def test_basis_is_orthonormal_and_matches_the_top_d_principal_components():
    samples = low_rank_trajectory()
    basis = dldr(samples, dim=4)
    assert basis.P.shape == (200, 4)
    torch.testing.assert_close(
        basis.P.T.double() @ basis.P.double(), torch.eye(4, dtype=torch.float64), atol=1e-5, rtol=0
    )
    centred = samples.double() - samples.double().mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    # same subspace as the SVD's top-4 right singular vectors: projectors agree
    reference = vh[:4].T
    torch.testing.assert_close(
        basis.P.double() @ basis.P.double().T, reference @ reference.T, atol=1e-4, rtol=0
    )
    torch.testing.assert_close(basis.singular_values, s[:4], rtol=1e-5, atol=0)
    ratio = basis.explained_variance_ratio
    torch.testing.assert_close(
        ratio[:4].sum(), (s[:4] ** 2).sum() / (s**2).sum(), rtol=1e-6, atol=0
    )
    assert ratio[:4].sum() > 0.999  # the trajectory lives in 4 directions plus noise
    assert torch.all(ratio[:-1] >= ratio[1:])
    torch.testing.assert_close(basis.mean, samples.double().mean(0).float())
    # projecting the centred samples onto span(P) keeps their top-d variance
    kept = (centred @ basis.P.double()).pow(2).sum()
    torch.testing.assert_close(kept, (s[:4] ** 2).sum(), rtol=1e-5, atol=0)


def test_truncate_equals_a_smaller_dldr():
    samples = low_rank_trajectory()
    small, big = dldr(samples, dim=2), dldr(samples, dim=4).truncate(2)
    torch.testing.assert_close(small.P, big.P)
    torch.testing.assert_close(small.singular_values, big.singular_values)


def test_disk_and_ram_stores_give_the_same_basis(tmp_path, monkeypatch):
    samples = low_rank_trajectory(t=12, n=300)
    ram, disk = TrajectoryStore(300, 12), TrajectoryStore(300, 12, tmp_path / "trajectory.f32")
    for row in samples:
        ram.append(row)
        disk.append(row)
    monkeypatch.setattr("smallfoot.subspace.basis.CHUNK", 64)  # several column chunks
    a, b = dldr(ram, 3), dldr(disk, 3)
    assert torch.equal(a.P, b.P) and torch.equal(a.mean, b.mean)
    torch.testing.assert_close(a.P, dldr(samples, 3).P, atol=1e-6, rtol=0)
    assert (tmp_path / "trajectory.f32").stat().st_size == 12 * 300 * 4
    reopened = TrajectoryStore(300, 12, tmp_path / "trajectory.f32")
    reopened.load_state_dict(disk.state_dict())
    assert torch.equal(dldr(reopened, 3).P, b.P)


def test_bad_requests_raise_config_errors():
    samples = low_rank_trajectory(t=5)
    with pytest.raises(ConfigError, match="lower --dim"):
        dldr(samples, dim=5)
    with pytest.raises(ConfigError, match="at least 2"):
        dldr(samples[:1], dim=1)
    with pytest.raises(ConfigError, match="all equal"):
        dldr(torch.ones(4, 10), dim=1)
    with pytest.raises(ConfigError, match="spans only"):
        dldr(torch.arange(4.0)[:, None] * torch.ones(4, 10), dim=2)
    store = TrajectoryStore(10, 1)
    store.append(torch.zeros(10))
    with pytest.raises(ConfigError, match="full"):
        store.append(torch.zeros(10))
    with pytest.raises(ConfigError, match="holds vectors of 10"):
        TrajectoryStore(10, 2).append(torch.zeros(11))


def test_save_load_keeps_the_layout_and_checks_the_model(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    n = sum(p.numel() for p in model.parameters())
    basis = dldr(low_rank_trajectory(t=8, n=n), 3, parameter_layout(model))
    path = basis.save(tmp_path / "basis.pt")
    loaded = Basis.load(path)
    assert (
        loaded.layout
        == basis.layout
        == [("0.weight", (4, 3)), ("0.bias", (4,)), ("2.weight", (2, 4)), ("2.bias", (2,))]
    )
    assert torch.equal(loaded.P, basis.P) and torch.equal(
        loaded.explained_variance_ratio, basis.explained_variance_ratio
    )
    loaded.check(model)
    with pytest.raises(ConfigError, match="different model"):
        loaded.check(nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)))
    (tmp_path / "junk.pt").write_bytes(b"not a basis")
    with pytest.raises(ConfigError, match="not a subspace basis"):
        Basis.load(tmp_path / "junk.pt")
    with pytest.raises(ConfigError, match="not found"):
        Basis.load(tmp_path / "missing.pt")
