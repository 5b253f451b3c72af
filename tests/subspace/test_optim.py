"""P-SGD stays in span(P); P-BFGS solves a quadratic in d + 2 steps; the line search is Armijo."""

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from smallfoot.errors import ConfigError
from smallfoot.subspace import (
    PBFGS,
    PSGD,
    Basis,
    armijo_line_search,
    backtracking_line_search,
    flatten,
    parameter_layout,
    set_params,
)


def random_basis(n, d, seed=0, dtype=torch.float64):
    """An orthonormal basis of a random d-dimensional subspace of R^n around a random mean."""
    g = torch.Generator().manual_seed(seed)
    P = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=torch.float64))[0].to(dtype)
    mean = torch.randn(n, generator=g, dtype=torch.float64).to(dtype)
    return Basis(
        P, mean, torch.ones(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64) / d, []
    )


def distance_to_span(vector, P):
    """|| (I - P P^T) v ||."""
    return (vector - P @ (P.T @ vector)).norm()


def test_psgd_keeps_w_minus_mean_in_span():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    basis = random_basis(n, 4)
    set_params(params, basis.point(torch.randn(4, dtype=torch.float64)))  # start inside
    optimizer = PSGD(params, basis, lr=0.5, momentum=0.9, weight_decay=1e-3)
    x, y = torch.randn(32, 5, dtype=torch.float64), torch.randint(0, 3, (32,))
    start = flatten(params)
    for _ in range(5):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    w = flatten(params)
    assert (w - start).norm() > 1e-3  # it moved
    assert distance_to_span(w - basis.mean, basis.P) < 1e-12
    assert optimizer.state[params[0]]["momentum_buffer"].shape == (4,)


def test_psgd_equals_sgd_on_the_projected_gradient():
    torch.manual_seed(1)
    model = nn.Linear(4, 2).double()
    params = list(model.parameters())
    basis = random_basis(10, 3, seed=1)
    optimizer = PSGD(params, basis, lr=0.1, momentum=0.5)
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    w, buffer = flatten(params), torch.zeros(3, dtype=torch.float64)
    for step in range(3):
        optimizer.zero_grad()
        (model(x) - y).pow(2).mean().backward()
        g = torch.cat([p.grad.reshape(-1) for p in params])
        buffer = basis.P.T @ g if step == 0 else 0.5 * buffer + basis.P.T @ g
        w = w - 0.1 * basis.P @ buffer
        optimizer.step()
        torch.testing.assert_close(flatten(params), w, rtol=0, atol=1e-12)


class Quadratic(nn.Module):
    """f(w) = 1/2 (w - w*)^T A (w - w*) with A positive definite on span(P) only."""

    def __init__(self, basis, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        d = basis.dim
        Q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
        H = Q @ torch.diag(torch.logspace(0, 2, d, dtype=torch.float64)) @ Q.T  # condition 100
        self.A = basis.P @ H @ basis.P.T
        self.target = basis.point(torch.randn(d, generator=g, dtype=torch.float64))
        self.w = nn.Parameter(basis.point(torch.zeros(d, dtype=torch.float64)).clone())

    def forward(self):
        delta = self.w - self.target
        return 0.5 * delta @ self.A @ delta


@pytest.mark.parametrize("d", [2, 5, 15])
def test_pbfgs_minimises_a_quadratic_in_d_plus_2_iterations(d):
    basis = random_basis(60, d, seed=d)
    problem = Quadratic(basis, seed=d)
    optimizer = PBFGS(problem.parameters(), basis, lr=1.0, refine_tol=0.0, max_evals=20)

    def closure():
        optimizer.zero_grad()
        loss = problem()
        loss.backward()
        return loss

    start = (problem.w.detach() - problem.target).norm()
    for _ in range(d + 2):
        optimizer.step(closure)
    error = (problem.w.detach() - problem.target).norm()
    assert error < 1e-8 * start
    assert optimizer.state[problem.w]["inverse_hessian"].shape == (d, d)


def test_pbfgs_skips_the_update_when_curvature_is_not_positive():
    basis = random_basis(6, 2, seed=3)
    w = nn.Parameter(basis.point(torch.zeros(2, dtype=torch.float64)).clone())
    optimizer = PBFGS([w], basis)
    gradients = iter([basis.P[:, 0], basis.P[:, 0] * 3.0, basis.P[:, 0]])

    def closure():  # a linear "loss" whose gradient changes from batch to batch
        optimizer.zero_grad()
        g = next(current)
        loss = g @ w
        loss.backward()
        return loss

    # batch 1: slope g1; batch 2: g2 = 3 g1 - then y^T s = (g2 - g1)^T s < 0 since s ~ -g1
    for g in gradients:
        current = iter([g] * 30)
        optimizer.step(closure)
    state = optimizer.state[w]
    assert state["skipped_updates"] >= 1
    assert torch.isfinite(state["inverse_hessian"]).all()


def test_pbfgs_needs_a_closure_and_matching_parameters():
    basis = random_basis(6, 2)
    with pytest.raises(ConfigError, match="closure"):
        PBFGS([nn.Parameter(torch.zeros(6, dtype=torch.float64))], basis).step()
    with pytest.raises(ConfigError, match="hold 5 values"):
        PBFGS([nn.Parameter(torch.zeros(5))], basis)
    with pytest.raises(ConfigError, match="lr > 0"):
        PSGD([nn.Parameter(torch.zeros(6))], basis, lr=0)
    assert PBFGS.needs_closure and not getattr(PSGD, "needs_closure", False)


@settings(max_examples=60, deadline=None)
@given(
    a=st.floats(0.05, 50.0),
    b=st.floats(-3.0, 3.0),
    c=st.floats(0.0, 5.0),
    slope=st.floats(-10.0, -0.01),
    alpha0=st.floats(0.01, 10.0),
    refine_tol=st.sampled_from([0.0, 0.1, 1.0]),
)
def test_line_search_satisfies_armijo(a, b, c, slope, alpha0, refine_tol):
    """phi(t) = slope t + a t^2 / 2 + c (1 - cos(b t)) / 2: non-quadratic, descent at 0."""
    calls = []

    def phi(t):
        calls.append(t)
        return slope * t + a * t * t / 2 + c * (
            1 - math.cos(b * t)
        ) / 2, slope + a * t + c * b * math.sin(b * t) / 2

    alpha, value, evals = armijo_line_search(
        phi, 0.0, slope, alpha0, c1=1e-4, max_evals=30, refine_tol=refine_tol
    )
    assert evals == len(calls) <= 30
    assert alpha > 0  # this phi always has Armijo steps near 0
    assert value == phi(alpha)[0]
    assert value <= 1e-4 * alpha * slope


def test_line_search_is_exact_on_a_quadratic_and_gives_up_without_decrease():
    alpha, value, evals = armijo_line_search(
        lambda t: ((t - 3) ** 2, 2 * (t - 3)), 9.0, -6.0, 1.0, refine_tol=0.0
    )
    assert alpha == pytest.approx(3.0) and value == pytest.approx(0.0) and evals == 2
    alpha, value, evals = armijo_line_search(lambda t: (1.0, 0.0), 0.0, -1.0, 1.0, max_evals=4)
    assert (alpha, value, evals) == (0.0, 0.0, 4)


def test_pbfgs_updates_batch_norm_statistics_once_per_step_whatever_the_line_search_tries():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    reference = copy.deepcopy(model)
    reference(x)  # one training-mode forward at the starting point
    params = list(model.parameters())
    basis = random_basis(sum(p.numel() for p in params), 3, seed=1)
    # a first trial step far too long, so that the line search evaluates several points
    optimizer = PBFGS(params, basis, lr=1e3, buffers=model.buffers())
    start = flatten(params).clone()

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    state = optimizer.state[params[0]]
    assert state["last_evals"] > 1 and state["last_alpha"] > 0
    assert not torch.equal(flatten(params), start)
    bn, reference_bn = model[1], reference[1]
    assert int(bn.num_batches_tracked) == 1
    torch.testing.assert_close(bn.running_mean, reference_bn.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(bn.running_var, reference_bn.running_var, rtol=0, atol=0)


def test_pbfgs_state_dict_round_trip_keeps_float64_and_continues_identically():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))  # float32 parameters
    params = list(model.parameters())
    basis = random_basis(sum(p.numel() for p in params), 4, dtype=torch.float32)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    optimizer = PBFGS(params, basis)
    for _ in range(2):
        optimizer.step(closure)
    saved = copy.deepcopy(optimizer.state_dict())
    weights = flatten(params).clone()
    optimizer.step(closure)
    expected = flatten(params).clone()
    set_params(params, weights)
    optimizer = PBFGS(params, basis)
    optimizer.load_state_dict(saved)
    state = optimizer.state[params[0]]
    assert state["inverse_hessian"].dtype == torch.float64
    assert state["previous_grad"].dtype == state["previous_step"].dtype == torch.float64
    optimizer.step(closure)  # float32 state here fails: dot of Double and Float
    torch.testing.assert_close(flatten(params), expected, rtol=0, atol=0)


@given(
    a=st.floats(0.1, 10),
    slope=st.floats(-10, -0.01),
    alpha0=st.floats(0.01, 2),
)
@settings(max_examples=50, deadline=None)
def test_backtracking_tries_shrinking_steps_never_longer_than_the_first(a, slope, alpha0):
    trials = []

    def phi(alpha):  # a quadratic line with slope `slope` at 0
        trials.append(alpha)
        return slope * alpha + 0.5 * a * alpha * alpha, slope + a * alpha

    alpha, value, evals = backtracking_line_search(phi, 0.0, slope, alpha0, 0.4, 0.4, 20)
    assert trials == pytest.approx([alpha0 * 0.4**k for k in range(evals)])
    assert alpha == trials[-1] <= alpha0 and value < 0.4 * alpha * slope


def test_backtracking_gives_up_without_a_step():
    alpha, value, evals = backtracking_line_search(lambda a: (1.0, 0.0), 0.0, -1.0, max_evals=5)
    assert (alpha, value, evals) == (0.0, 0.0, 5)


def test_same_batch_curvature_pair_is_the_secant_of_the_steps_own_batch():
    d = 4
    basis = random_basis(30, d, seed=5)
    problem = Quadratic(basis, seed=5)
    optimizer = PBFGS(problem.parameters(), basis, line_search="backtrack", curvature="same-batch")
    hessian = basis.P.T @ problem.A @ basis.P  # (d, d) of the loss restricted to span(P)

    def closure():
        optimizer.zero_grad()
        loss = problem()
        loss.backward()
        return loss

    generator = torch.Generator().manual_seed(0)
    for _ in range(3):  # each step sees another "batch": the minimum moves
        with torch.no_grad():
            problem.target += basis.P @ torch.randn(d, generator=generator, dtype=torch.float64)
        optimizer.step(closure)
        state = optimizer.state[problem.w]
        # y = H s on the step's own quadratic, whatever the next batch is
        torch.testing.assert_close(state["pair_y"], hessian @ state["pair_s"])
    assert state["skipped_updates"] == 0


def test_pbfgs_in_the_trainer_takes_both_gradients_of_a_pair_from_the_steps_batch():
    from smallfoot.data import ArrayDataset
    from smallfoot.subspace.method import make_subspace_optimizer
    from smallfoot.train import TrainConfig, Trainer

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    data = ArrayDataset(torch.randn(48, 6, dtype=torch.float64), torch.randint(0, 3, (48,)), 3, "t")
    basis = random_basis(sum(p.numel() for p in model.parameters()), 4, seed=2)
    basis.layout = parameter_layout(model)
    optimizer = make_subspace_optimizer(
        model, basis, "pbfgs", 1.0, 0.9, 0.0, line_search="backtrack", curvature="same-batch"
    )
    trainer = Trainer(
        model,
        data,
        None,
        TrainConfig(epochs=1, batch_size=16, schedule="constant"),
        optimizer=optimizer,
    )
    params = list(model.parameters())

    def projected_grad(weights, x, y):
        set_params(params, weights)
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        return basis.P.T @ torch.cat([p.grad.reshape(-1) for p in params])

    for x, y in trainer.loader().epoch(0):
        before = flatten(params).clone()
        trainer.train_step(x, y)
        after = flatten(params).clone()
        state = optimizer.state[params[0]]
        expected = projected_grad(after, x, y) - projected_grad(before, x, y)
        set_params(params, after)
        torch.testing.assert_close(state["pair_y"], expected)
        torch.testing.assert_close(basis.P @ state["pair_s"], after - before)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["c1"], group["shrink"], group["max_evals"]) == (1.0, 0.4, 0.4, 20)
