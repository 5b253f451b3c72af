"""Optimizers that move the parameters only inside ``span(P)`` (Li et al., *Low dimensional landscape hypothesis is true: DNNs can be trained in tiny subspaces*).

:class:`PSGD` projects the gradient, ``g~ = P^T g`` (d values), keeps its momentum in those d
dimensions and steps ``w <- w - lr P m``. :class:`PBFGS` (algorithm 2) keeps a d x d
inverse-Hessian approximation ``B`` (B_0 = I, the BFGS rank-two update of eq. 13), searches
the step length along ``-B g~`` by backtracking until the Armijo condition holds on the
mini-batch loss, and steps ``w <- w + P s``. Both keep their state under the first
parameter, as ``torch.optim.LBFGS`` does, so ``state_dict`` checkpoints it; that state holds
the basis ``P`` itself (n x d), the largest thing they keep, so the meter counts it too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from smallfoot.errors import ConfigError
from smallfoot.subspace.basis import Basis
from smallfoot.subspace.trajectory import add_to_params, flat_grad


def _checked_params(params: Iterable[torch.Tensor], basis: Basis) -> list[torch.Tensor]:
    params = list(params)
    if params and isinstance(params[0], dict):
        raise ConfigError("subspace optimizers take one list of parameters, not parameter groups")
    size = sum(p.numel() for p in params)
    if size != basis.size:
        raise ConfigError(
            f"the parameters hold {size} values but the basis spans vectors of {basis.size}; "
            "pass the trainable parameters of the model the basis was extracted from, in order"
        )
    if basis.layout and [tuple(p.shape) for p in params] != [s for _, s in basis.layout]:
        raise ConfigError(
            "the parameter shapes differ from the basis' layout; pass model.parameters() of the "
            "model the basis was extracted from"
        )
    return params


class PSGD(torch.optim.Optimizer):
    """SGD with momentum inside ``span(P)``: ``m <- mu m + P^T (g + wd w)``, ``w <- w - lr P m``.

    Args:
        params: the trainable parameters, in the order of the basis' layout (n values).
        basis: the :class:`Basis` (``P`` n x d, on the parameters' device).
        lr: step size; the projected gradient is smaller than the full one, so rates above
            SGD's usually fit.
        momentum: ``mu``; the buffer has d entries.
        weight_decay: L2 coefficient added to the gradient before projection.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        basis: Basis,
        lr: float = 1.0,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
    ):
        if lr <= 0 or momentum < 0 or weight_decay < 0:
            raise ConfigError(
                f"P-SGD needs lr > 0, momentum >= 0, weight_decay >= 0 (got {lr}, {momentum}, {weight_decay})"
            )
        params = _checked_params(params, basis)
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})
        self.state[params[0]]["basis"] = basis.P

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One projected step from the gradients in ``.grad``; returns the closure's loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        params = group["params"]
        grad = flat_grad(params)  # (n,)
        if group["weight_decay"]:
            grad += group["weight_decay"] * torch.cat([p.reshape(-1) for p in params])
        state = self.state[params[0]]
        P = state["basis"]  # (n, d)
        projected = P.T @ grad  # (d,)
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = projected.clone()
        else:
            state["momentum_buffer"].mul_(group["momentum"]).add_(projected)
        add_to_params(params, P @ state["momentum_buffer"], alpha=-group["lr"])
        return loss


def armijo_line_search(
    phi: Callable[[float], tuple[float, float]],
    phi0: float,
    dphi0: float,
    alpha0: float = 1.0,
    c1: float = 1e-4,
    max_evals: int = 10,
    refine_tol: float = 0.1,
) -> tuple[float, float, int]:
    """A step length along a descent direction that satisfies the Armijo condition.

    ``phi(alpha) -> (value, slope)`` evaluates the objective along the direction; ``phi0``
    and ``dphi0 < 0`` are its value and slope at 0. The first trial is ``alpha0``. When the
    slope rose from ``dphi0`` (positive curvature) and the secant minimiser
    ``alpha0 dphi0 / (dphi0 - dphi(alpha0))`` (exact on a quadratic) lies further than
    ``refine_tol * alpha0`` from ``alpha0``, it is tried too. Until a trial satisfies
    ``phi(alpha) <= phi0 + c1 alpha dphi0`` the step is cut back to the minimiser of the
    quadratic through ``phi0, dphi0, phi(alpha)``, kept within [0.1, 0.5] of the last one
    (Nocedal & Wright, section 3.5).

    Returns:
        ``(alpha, phi(alpha), evaluations)``; ``alpha`` is 0 (no step) when no trial within
        ``max_evals`` satisfied the condition. Among satisfying trials the lowest value wins.
    """
    if not dphi0 < 0:
        raise ValueError(f"the direction is not a descent direction (slope {dphi0})")

    def armijo(alpha: float, value: float) -> bool:
        return value <= phi0 + c1 * alpha * dphi0

    alpha = alpha0
    value, slope = phi(alpha)
    evals = 1
    best = (alpha, value) if armijo(alpha, value) else None
    if slope > dphi0 and evals < max_evals:
        secant = alpha * dphi0 / (dphi0 - slope)
        secant = min(10 * alpha, max(0.1 * alpha, secant))
        if abs(secant - alpha) > refine_tol * alpha:
            secant_value, _ = phi(secant)
            evals += 1
            if armijo(secant, secant_value):
                if best is None or secant_value < best[1]:
                    best = (secant, secant_value)
            elif best is None and secant < alpha:
                alpha, value = secant, secant_value
    while best is None and evals < max_evals:
        curvature = value - phi0 - dphi0 * alpha  # > 0 while Armijo fails
        quadratic = -dphi0 * alpha * alpha / (2 * curvature)
        alpha = min(0.5 * alpha, max(0.1 * alpha, quadratic))
        value, _ = phi(alpha)
        evals += 1
        if armijo(alpha, value):
            best = (alpha, value)
    if best is None:
        return 0.0, phi0, evals
    return best[0], best[1], evals


def backtracking_line_search(
    phi: Callable[[float], tuple[float, float]],
    phi0: float,
    dphi0: float,
    alpha0: float = 1.0,
    c1: float = 0.4,
    shrink: float = 0.4,
    max_evals: int = 20,
) -> tuple[float, float, int]:
    """The DLDR authors' backtracking search: trials ``alpha0, shrink alpha0, shrink^2 alpha0,
    ...`` until ``phi(alpha) < phi0 + c1 alpha dphi0`` (``dphi0 < 0``); never longer than
    ``alpha0``. ``phi`` as for :func:`armijo_line_search` (its slope is not used).

    Returns:
        ``(alpha, phi(alpha), evaluations)``; ``alpha`` is 0 (no step) when none of
        ``max_evals`` trials satisfied the condition (the authors' code then takes the last,
        shortest trial anyway).
    """
    if not dphi0 < 0:
        raise ValueError(f"the direction is not a descent direction (slope {dphi0})")
    alpha = alpha0
    for evals in range(1, max_evals + 1):
        value, _ = phi(alpha)
        if value < phi0 + c1 * alpha * dphi0:
            return alpha, value, evals
        alpha *= shrink
    return 0.0, phi0, max_evals


class PBFGS(torch.optim.Optimizer):
    """BFGS in ``span(P)`` with a backtracking Armijo line search (algorithm 2).

    Each ``step(closure)`` calls the closure (which re-evaluates the mini-batch loss and its
    gradients) at the current point, projects the gradient ``g~_k = P^T g_k``, updates the
    inverse-Hessian approximation with the last curvature pair ``s, y`` (eq. 13; skipped when
    ``y^T s <= 0``, which a stochastic gradient difference can give), searches ``alpha`` along
    ``-B g~_k`` on the same mini-batch and steps ``w <- w + P alpha (-B g~_k)``.

    Args:
        params: the trainable parameters, in the order of the basis' layout.
        basis: the :class:`Basis`.
        lr: the first trial step length ``alpha0`` of every line search (1: the quasi-Newton step).
        c1: Armijo constant (sufficient decrease ``c1 alpha g~^T p``).
        max_evals: closure evaluations per line search at most.
        refine_tol: see :func:`armijo_line_search`; 0 makes every search exact on quadratics.
        line_search: ``"interpolate"`` (:func:`armijo_line_search`: secant and quadratic
            trials, up to 10 x ``lr``) or ``"backtrack"`` (:func:`backtracking_line_search`,
            the authors': ``lr`` times powers of ``shrink``, never longer than ``lr``).
        shrink: the backtracking factor.
        curvature: ``"next-batch"``: ``y = g~_k - g~_{k-1}``, the gradients of two
            mini-batches (algorithm 2 as written); ``"same-batch"``: ``y`` is the difference
            of the projected gradients at the accepted point and at ``w_k`` on step k's own
            mini-batch (the line search evaluated both), so batch noise does not enter ``y``.
        buffers: tensors the closure changes as a side effect (batch-norm running statistics,
            ``num_batches_tracked``): each step keeps what its first evaluation, at the
            current point, made of them, and restores them after every line-search trial, so
            they are updated exactly once per step, never from rejected trial points.
    """

    needs_closure = True

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        basis: Basis,
        lr: float = 1.0,
        c1: float = 1e-4,
        max_evals: int = 10,
        refine_tol: float = 0.1,
        buffers: Iterable[torch.Tensor] = (),
        line_search: str = "interpolate",
        shrink: float = 0.4,
        curvature: str = "next-batch",
    ):
        if lr <= 0 or not 0 < c1 < 0.5 or max_evals < 1 or refine_tol < 0 or not 0 < shrink < 1:
            raise ConfigError(
                f"P-BFGS needs lr > 0, 0 < c1 < 0.5, max_evals >= 1, refine_tol >= 0, "
                f"0 < shrink < 1 (got {lr}, {c1}, {max_evals}, {refine_tol}, {shrink})"
            )
        if line_search not in ("interpolate", "backtrack"):
            raise ConfigError(
                f"unknown line search {line_search!r}; choose interpolate or backtrack"
            )
        if curvature not in ("next-batch", "same-batch"):
            raise ConfigError(
                f"unknown curvature pair {curvature!r}; choose next-batch or same-batch"
            )
        params = _checked_params(params, basis)
        defaults = {
            "lr": lr,
            "c1": c1,
            "max_evals": max_evals,
            "refine_tol": refine_tol,
            "line_search": line_search,
            "shrink": shrink,
            "curvature": curvature,
        }
        super().__init__(params, defaults)
        self.state[params[0]]["basis"] = basis.P
        self.kept_buffers = list(buffers)

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a :meth:`state_dict`, keeping ``B``, the last projected gradient and step in
        float64 (``torch.optim.Optimizer`` would cast them to the parameters' float32)."""
        first = state_dict["param_groups"][0]["params"][0]
        exact = {
            key: value
            for key, value in state_dict["state"].get(first, {}).items()
            if torch.is_tensor(value) and value.dtype == torch.float64
        }
        super().load_state_dict(state_dict)
        params = self.param_groups[0]["params"]
        state = self.state[params[0]]
        for key, value in exact.items():
            state[key] = value.to(params[0].device, copy=True)

    def _projected_grad(self, P: torch.Tensor) -> torch.Tensor:
        return (P.T @ flat_grad(self.param_groups[0]["params"])).double()

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:  # type: ignore[override]
        """One quasi-Newton step; ``closure()`` must zero the gradients, recompute the
        mini-batch loss, call ``backward`` and return the loss. Returns the loss before the step."""
        if closure is None:
            raise ConfigError(
                "P-BFGS needs a closure re-evaluating the mini-batch loss (optimizer.step(closure))"
            )
        closure = torch.enable_grad()(closure)
        group = self.param_groups[0]
        params = group["params"]
        state = self.state[params[0]]
        P = state["basis"]  # (n, d)
        d = P.shape[1]
        if "inverse_hessian" not in state:
            state.update(
                inverse_hessian=torch.eye(d, dtype=torch.float64, device=P.device),
                steps=0,
                skipped_updates=0,
            )
        loss = closure()
        buffers_after_first = [b.clone() for b in self.kept_buffers]
        phi0 = float(loss)
        grad = self._projected_grad(P)  # (d,)
        B = state["inverse_hessian"]
        pair = None
        if group["curvature"] == "same-batch" and "pair_y" in state:
            pair = state.pop("pair_y"), state.pop("pair_s")
        elif group["curvature"] == "next-batch" and "previous_grad" in state:
            pair = grad - state["previous_grad"], state["previous_step"]
        if pair is not None:
            y, s = pair
            ys = float(y @ s)
            if ys > 1e-10 * float(y.norm() * s.norm()):
                rho = 1.0 / ys
                V = torch.eye(d, dtype=B.dtype, device=B.device) - rho * torch.outer(y, s)
                B = V.T @ B @ V + rho * torch.outer(s, s)  # eq. 13
                state["inverse_hessian"] = B
            else:
                state["skipped_updates"] += 1
        direction = -(B @ grad)  # (d,)
        slope0 = float(grad @ direction)
        if not slope0 < 0:  # B lost positive definiteness to rounding: restart from I
            state["inverse_hessian"] = torch.eye(d, dtype=B.dtype, device=B.device)
            direction, slope0 = -grad, -float(grad @ grad)
        state["previous_grad"] = grad
        if slope0 == 0:  # zero projected gradient: nothing to do
            state["previous_step"] = torch.zeros_like(grad)
            state["steps"] += 1
            return loss
        full_direction = P @ direction.to(P.dtype)  # (n,)
        position = 0.0
        trial_grads: dict[float, torch.Tensor] = {}

        def phi(alpha: float) -> tuple[float, float]:
            nonlocal position
            add_to_params(params, full_direction, alpha=alpha - position)
            position = alpha
            value = float(closure())
            for buffer, kept in zip(self.kept_buffers, buffers_after_first, strict=True):
                buffer.copy_(kept)
            trial_grads[alpha] = self._projected_grad(P)
            return value, float(trial_grads[alpha] @ direction)

        if group["line_search"] == "backtrack":
            alpha, _, evals = backtracking_line_search(
                phi, phi0, slope0, group["lr"], group["c1"], group["shrink"], group["max_evals"]
            )
        else:
            alpha, _, evals = armijo_line_search(
                phi,
                phi0,
                slope0,
                group["lr"],
                group["c1"],
                group["max_evals"],
                group["refine_tol"],
            )
        add_to_params(params, full_direction, alpha=alpha - position)
        if alpha > 0 and group["curvature"] == "same-batch":
            state["pair_y"], state["pair_s"] = trial_grads[alpha] - grad, alpha * direction
        state["previous_step"] = alpha * direction
        state["steps"] += 1
        state["last_alpha"], state["last_evals"] = alpha, evals
        return loss
