"""Closed-form MLP fitting with Platonic projections (thesis ch. 7).

A multilayer perceptron ``Z_i = sigma(Z_{i-1} W_i)``, ``Z_0 = X``, is fitted bottom-up without
gradients: each hidden layer solves one least-squares problem ``W_i = Z_{i-1}^+ T_i`` towards
the hidden target ``T_i = alpha [Z_{i-1} | beta Y] P_i`` (a *Platonic projection* of the
augmented matrix), and the output layer solves ``W = Z^+ Y``. Biases are handled as in the
thesis' figure 7.3: a column of ones is prepended to every layer input, so row 0 of ``W_i`` is
the bias.

Every quantity the solve needs is a function of the Gram matrix of ``[1 | Z | Y]``, so the
``ridge`` solver accumulates it over mini-batches (``X^T X`` and ``X^T T`` summed batch by
batch): memory is one ``batch x width`` block plus ``width x width`` matrices, never the
``m x width`` representation. ``pinv`` and ``lstsq`` factorise the whole representation and
need it in memory (``batch_size=None``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from smallfoot.data import LazyInputs
from smallfoot.errors import ConfigError, ShapeError, TrainingError

PROJECTIONS = ("random", "platonic-pca", "sorted-pca", "elm")
"""Per-layer ways of choosing hidden weights; ``deterministic`` names a combination of them."""
TARGETS = (*PROJECTIONS, "deterministic")
BETA = 10.0
"""Default label weight beta: the thesis' value for random ``P`` (its MNIST runs, table 7.2,
and the sine); it used 1e4 for the deterministic targets."""
RIDGE = 1e-3
"""Default L2 penalty of the ridge solver: small, close to the plain least-squares solves of
the thesis' toy problems. The penalty adds to a Gram matrix summed (not averaged) over the
samples, so its useful size grows with them: the thesis used 5e4 on MNIST's 60,000 images."""
SOLVERS = ("ridge", "pinv", "lstsq")
CODINGS = ("auto", "sign", "one-hot", "centred")
"""Class-label codings of ``Y``; ``auto`` is the thesis' choice (``sign`` for two classes,
``one-hot`` for more)."""
PINV_TOL = {torch.float32: 1e-5, torch.float64: None}
"""Default absolute tolerance of ``pinv`` per dtype: 1e-5 in float32 (thesis table 7.1),
PyTorch's relative default in float64."""
ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "celu": nn.CELU,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}


@dataclass
class LayerReport:
    """What fitting one layer produced.

    Attributes:
        index: 1-based layer number (the output layer is last).
        width: number of units.
        projection: how the weights were chosen (``random``, ``platonic-pca``, ``sorted-pca``,
            ``elm`` or ``output``).
        lsd: least squares distance of eq. 5.3, ``||Y - Z Z^+ Y||_F^2 / m``, of this layer's
            representation (with its bias column) to the one-hot or regression targets, as
            the residual of the least-squares read-out over the data; for the output layer,
            the mean squared error of the fitted outputs.
        train_error: error of the best linear read-out of this layer on the training set:
            classification error rate (fraction, 0-1) or mean squared error (regression).
        seconds: wall time of fitting this layer, including its data passes.
        tries_lsd: the LSD of every candidate projection tried, from its Gram matrix (the
            lowest one was kept).
    """

    index: int
    width: int
    projection: str
    lsd: float
    train_error: float
    seconds: float
    tries_lsd: list[float] = field(default_factory=list)


@dataclass
class FitResult:
    """A fitted MLP and how the fit went.

    Attributes:
        model: ``nn.Sequential(Flatten, (Linear, activation) x hidden, Linear)`` in the fit
            dtype; the layout (and state-dict keys) of ``build_model("mlp", widths=...)``.
        layers: one :class:`LayerReport` per hidden layer, then the output layer.
        seconds: total wall time of the fit.
        train_error: final training error (error rate or MSE, as ``LayerReport``).
        coding: the label coding used (``sign``, ``one-hot``, ``centred``; ``none`` for
            regression). With ``sign`` on two classes the model has one output, positive for
            class 1; otherwise its outputs estimate one-hot targets (argmax = class).
    """

    model: nn.Sequential
    layers: list[LayerReport]
    seconds: float
    train_error: float
    coding: str = "one-hot"

    def to_dict(self) -> dict:
        """A JSON-ready summary (per-layer reports as dicts)."""
        return {
            "seconds": self.seconds,
            "train_error": self.train_error,
            "coding": self.coding,
            "layers": [vars(layer) for layer in self.layers],
        }


def layer_projections(targets: str | Sequence[str], depth: int) -> list[str]:
    """Per-hidden-layer projection names for ``targets`` and ``depth`` hidden layers.

    ``deterministic`` is Sorted PCA in the first layer and Platonic PCA after (section 7.8.3);
    a single name applies to every layer; a sequence gives one name per hidden layer.
    ``sorted-pca`` selects input samples, so it is only valid in the first layer.
    """
    if isinstance(targets, str):
        if targets in ("deterministic", "sorted-pca"):
            names = ["sorted-pca"] + ["platonic-pca"] * (depth - 1)
        else:
            names = [targets] * depth
    else:
        names = list(targets)
    if len(names) != depth:
        raise ConfigError(
            f"targets lists {len(names)} projections for {depth} hidden layers; "
            "give one name per hidden layer or a single name"
        )
    for i, name in enumerate(names):
        if name not in PROJECTIONS:
            raise ConfigError(f"unknown projection {name!r}; choose one of: {', '.join(TARGETS)}")
        if name == "sorted-pca" and i > 0:
            raise ConfigError(
                "sorted-pca selects input samples as weight vectors, so it only fits the first "
                "hidden layer; use platonic-pca or random for the later ones (or 'deterministic')"
            )
    return names


def resolve_coding(coding: str, num_classes: int) -> str:
    """The coding ``auto`` stands for: ``sign`` for two classes (one output, ``y`` in
    {-1, +1}, thesis figure 7.2), ``one-hot`` for more (its MNIST runs); ``none`` for
    regression (``num_classes`` 0, whatever the coding). Other names are returned as they
    are, once checked."""
    if coding not in (*CODINGS, "none"):
        raise ConfigError(f"unknown coding {coding!r}; choose one of: {', '.join(CODINGS)}")
    if num_classes == 0:
        return "none"
    if coding == "auto":
        return "sign" if num_classes == 2 else "one-hot"
    return coding


def encode_targets(
    y: torch.Tensor, num_classes: int, dtype: torch.dtype, coding: str = "auto"
) -> torch.Tensor:
    """``Y`` of the least-squares problems for int64 labels ``(m,)``, ``(m, k)``:

    * ``sign``: two classes as one column ``2 y - 1`` in {-1, +1} (``k = 1``); more classes
      as ``2 * one-hot - 1``;
    * ``one-hot``: {0, 1} columns;
    * ``centred``: one-hot minus each column's mean (the class frequency), so ``beta Y`` puts
      no constant into the hidden targets' bias.

    For regression (``num_classes`` 0) the float targets ``(m, D)``, whatever the coding.
    """
    coding = resolve_coding(coding, num_classes)
    if coding == "none":
        return (y if y.dim() == 2 else y.reshape(len(y), -1)).to(dtype)
    if y.dim() != 1:
        raise ShapeError(f"class labels must have shape (m,), got {tuple(y.shape)}")
    one_hot = nn.functional.one_hot(y.long(), num_classes).to(dtype)
    if coding == "sign":
        return (2 * y.to(dtype) - 1)[:, None] if num_classes == 2 else 2 * one_hot - 1
    if coding == "centred":
        return one_hot - one_hot.mean(dim=0)
    return one_hot


def predicted_classes(outputs: torch.Tensor) -> torch.Tensor:
    """Class labels ``(m,)`` from a fitted model's outputs ``(m, k)``: ``outputs > 0`` for the
    single column of the binary ``sign`` coding, else the argmax."""
    if outputs.shape[1] == 1:
        return (outputs[:, 0] > 0).long()
    return outputs.argmax(dim=1)


def _output_to_scores(
    w_out: torch.Tensor, coding: str, offset: torch.Tensor | None
) -> torch.Tensor:
    """The output weights ``(c, k)`` rewritten so the model's outputs estimate one-hot targets
    (row 0 is the bias): ``sign`` with several columns halves and shifts by 1/2, ``centred``
    adds the class frequencies ``offset`` ``(k,)`` back. The single ``sign`` column of a
    binary problem and the other codings are returned unchanged."""
    w = w_out.clone()
    if coding == "sign" and w.shape[1] > 1:
        w = w / 2
        w[0] += 0.5
    elif coding == "centred":
        w[0] += offset
    return w


def _with_ones(z: torch.Tensor) -> torch.Tensor:
    """``[1 | z]``: the bias column of figure 7.3 prepended, ``(b, n) -> (b, n + 1)``."""
    return torch.cat([torch.ones(len(z), 1, dtype=z.dtype), z], dim=1)


def _batches(m: int, batch_size: int | None) -> list[slice]:
    step = m if batch_size is None else batch_size
    return [slice(start, min(start + step, m)) for start in range(0, m, step)]


class _Stack:
    """The fitted hidden layers so far and the data, yielding ``[1 | Z_i]`` batch by batch
    (lazily read inputs are read, flattened and cast one batch at a time)."""

    def __init__(self, x, y: torch.Tensor, activation: nn.Module, batch_size, dtype):
        self.x, self.y, self.activation, self.dtype = x, y, activation, dtype
        self.weights: list[torch.Tensor] = []  # each (n_in + 1, width), row 0 = bias
        self.slices = _batches(len(x), batch_size)

    def inputs(self, extra: torch.Tensor | None = None) -> Iterator[tuple[slice, torch.Tensor]]:
        """``(rows, [1 | Z_last])`` per batch; ``extra`` (n + 1, w) adds one more layer."""
        weights = self.weights if extra is None else [*self.weights, extra]
        for rows in self.slices:
            z = self.x[rows].reshape(rows.stop - rows.start, -1).to(self.dtype)
            for w in weights:
                z = self.activation(_with_ones(z) @ w)
            yield rows, _with_ones(z)


def _gram(stack: _Stack, y: torch.Tensor, extra=None) -> torch.Tensor:
    """``B^T B`` for ``B = [1 | Z | Y]`` summed over batches, ``(c + k, c + k)``."""
    total = None
    for rows, z1 in stack.inputs(extra):
        block = torch.cat([z1, y[rows]], dim=1)
        gram = block.T @ block
        total = gram if total is None else total + gram
    return total


def _check_finite(w: torch.Tensor, what: str, dtype: torch.dtype) -> torch.Tensor:
    if not torch.isfinite(w).all():
        raise TrainingError(
            f"the least-squares solve for {what} produced NaN/Inf in {dtype}; use "
            "solver='ridge' with a larger penalty, or dtype=float64"
        )
    return w


class _Solver:
    """Solves ``min ||Z1 W - T||^2 (+ ridge ||W||^2)`` for one layer input, factorising once.

    ``ridge`` works on the accumulated Gram matrix ``G = Z1^T Z1`` (LU of ``G + lambda I``,
    reused for every right-hand side ``Z1^T T``); ``pinv`` keeps ``Z1^+``; ``lstsq`` keeps
    ``Z1`` and calls ``torch.linalg.lstsq`` per target.
    """

    def __init__(self, name, gram_z, z1, ridge, tol, what):
        self.name, self.z1, self.what = name, z1, what
        self.dtype = gram_z.dtype
        if name == "ridge":
            c = len(gram_z)
            system = gram_z + ridge * torch.eye(c, dtype=self.dtype)
            self.lu, self.pivots, info = torch.linalg.lu_factor_ex(system)
            # LAPACK reports an exactly zero pivot (e.g. a dead unit or constant feature with no
            # ridge penalty); solving on would return Inf/NaN, as the thesis saw with float32
            # solve on the CPU.
            if info.item() != 0:
                raise TrainingError(
                    f"the normal equations for {what} are singular in {self.dtype} "
                    f"(ridge penalty {ridge:g}); increase the ridge penalty (--ridge), or use "
                    "dtype=float64, or solver='pinv'"
                )
        elif name == "pinv":
            self.pinv = (
                torch.linalg.pinv(z1, atol=tol) if tol is not None else torch.linalg.pinv(z1)
            )

    def solve_gram(self, rhs: torch.Tensor) -> torch.Tensor:
        """``W`` from the right-hand side ``Z1^T T`` (ridge only), ``(c, w)``."""
        return _check_finite(
            torch.linalg.lu_solve(self.lu, self.pivots, rhs), self.what, self.dtype
        )

    def solve(self, target: torch.Tensor) -> torch.Tensor:
        """``W`` from the full target ``T`` ``(m, w)`` (pinv / lstsq)."""
        if self.name == "pinv":
            w = self.pinv @ target
        else:
            w = torch.linalg.lstsq(self.z1, target).solution
        return _check_finite(w, self.what, self.dtype)


def _lsd_and_readout(gram: torch.Tensor, c: int, m: int) -> tuple[float, torch.Tensor]:
    """LSD (eq. 5.3) of ``[1 | Z]`` to ``Y`` and the least-squares read-out ``Q = Z1^+ Y``,
    both from the Gram matrix of ``[1 | Z | Y]`` (solved in float64; eigenvalues below the
    precision the Gram matrix was summed in are cut off, as pinv does)."""
    rtol = c * torch.finfo(gram.dtype).eps
    g = gram.double()
    zz, zy, yy = g[:c, :c], g[:c, c:], g[c:, c:]
    q = torch.linalg.pinv(zz, rtol=rtol, hermitian=True) @ zy
    # ||Y - Z Q||^2 = tr(Y^T Y) - tr(Q^T Z^T Y) for the least-squares Q.
    residual = (yy.trace() - (q * zy).sum()).clamp_min(0.0)
    return float(residual / m), q


def _principal_components(cov: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` leading eigenvectors of a covariance matrix as columns, signs fixed so the
    largest-magnitude entry of each is positive (deterministic across LAPACK builds)."""
    values, vectors = torch.linalg.eigh(cov)
    order = torch.argsort(values, descending=True, stable=True)[:count]
    top = vectors[:, order]
    rows = top.abs().argmax(dim=0)
    signs = torch.sign(top[rows, torch.arange(count)])
    return top * torch.where(signs == 0, torch.ones_like(signs), signs)


def _covariance(gram: torch.Tensor, m: int) -> torch.Tensor:
    """Covariance of the columns of ``B`` from ``B^T B`` when column 0 of ``B`` is ones."""
    mean = gram[0] / m
    return gram / m - torch.outer(mean, mean)


def platonic_pca_projection(gram_aug: torch.Tensor, m: int, width: int) -> torch.Tensor:
    """Platonic PCA (section 7.8.1): ``P`` = the ``width`` leading principal components of the
    augmented matrix ``A``, given ``A^T A`` with ``A``'s column 0 constant, ``(c + k, width)``.
    """
    usable = len(gram_aug) - 1  # the constant bias column carries no variance
    if width > usable:
        raise ConfigError(
            f"platonic-pca gives at most {usable} components (layer input width + classes) "
            f"but the layer has {width} units; narrow the layer, or use sorted-pca / random "
            "projections for it"
        )
    return _principal_components(_covariance(gram_aug, m), width)


def sorted_pca_indices(x: torch.Tensor, count: int) -> torch.Tensor:
    """Sorted PCA (section 7.8.2, figure 7.14): indices of ``count`` samples of ``x`` ``(m, n)``
    evenly spaced along the first principal component, in ascending order of projection."""
    m = len(x)
    if count > m:
        raise ConfigError(f"sorted-pca picks {count} samples but the data has only {m}")
    mean = x.mean(dim=0)
    first = _principal_components(x.T @ x / m - torch.outer(mean, mean), 1)
    order = torch.argsort((x @ first)[:, 0], stable=True)
    return order[(torch.arange(count, dtype=torch.float64) * m / count).long()]


def sorted_pca_weights(x: torch.Tensor, count: int, alpha: float) -> torch.Tensor:
    """First-layer weights from Sorted PCA: the selected samples, centred, as weight vectors.

    Unit ``j`` computes ``alpha (x - mu) . (x_j - mu)``: its pre-activation is the (centred)
    correlation of the input with sample ``x_j`` (the *correlation filter* view of section
    5.5.1); centring keeps the ReLU from passing every input of non-negative data. Returns
    ``(n + 1, count)`` with the bias in row 0.
    """
    mean = x.mean(dim=0)
    vectors = (x[sorted_pca_indices(x, count)] - mean).T  # (n, count)
    bias = -(mean @ vectors)
    return alpha * torch.cat([bias[None], vectors], dim=0)


def fit_mlp(
    x: torch.Tensor,
    y: torch.Tensor,
    widths: Sequence[int],
    *,
    num_classes: int | None = None,
    activation: str = "relu",
    targets: str | Sequence[str] = "random",
    alpha: float = 1.0,
    beta: float = BETA,
    tries: int = 1,
    solver: str = "ridge",
    ridge: float = RIDGE,
    tol: float | None = None,
    ema: float | None = None,
    batch_size: int | None = None,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    coding: str = "auto",
) -> FitResult:
    """Fit an MLP in closed form, one least-squares problem per layer (thesis ch. 7).

    Args:
        x: inputs ``(m, ...)``; flattened to ``(m, n)``. :class:`~smallfoot.data.LazyInputs`
            (data that need not fit in memory) are read ``batch_size`` rows at a time, once
            per pass (about two passes per hidden layer and try); they need the ridge solver
            with a ``batch_size`` and a projection other than ``sorted-pca``.
        y: int64 labels ``(m,)`` (classification, coded by ``coding``) or float targets
            ``(m, D)`` (regression, ``num_classes=0``).
        widths: hidden layer widths, e.g. ``(784, 392)``.
        num_classes: number of classes; default ``y.max() + 1`` for int labels, 0 for floats.
        activation: ``relu``, ``tanh``, ``celu``, ``sigmoid`` or ``identity``.
        targets: how hidden weights are chosen: ``random`` (Gaussian ``P``), ``platonic-pca``,
            ``sorted-pca`` (first layer; Platonic PCA after), ``deterministic`` (the same
            combination, section 7.8.3), ``elm`` (Gaussian hidden *weights*, no targets: the
            Extreme Learning Machine baseline), or one name per hidden layer.
        alpha, beta: target scaling, ``T = alpha [Z | beta Y] P`` (section 7.5.2).
        tries: random projections only: candidates per layer; the one whose representation
            has the lowest LSD is kept, reusing one factorisation of the layer input.
        solver: ``ridge`` (``torch.linalg`` LU solve of ``(Z^T Z + ridge I) W = Z^T T`` on
            normal equations accumulated over mini-batches), ``pinv`` (``Z^+ T`` with absolute
            tolerance ``tol``) or ``lstsq`` (``torch.linalg.lstsq``); the last two need the
            whole layer input in memory (``batch_size=None``).
        ridge: L2 penalty ``lambda`` of the ridge solver.
        tol: absolute singular-value cut-off of ``pinv``; ``None``: ``PINV_TOL`` of the dtype
            (1e-5 in float32 as in table 7.1, PyTorch's relative default in float64); ``0``:
            PyTorch's relative default in either dtype.
        ema: ``lambda_EMA`` of the per-sample error re-weighting of Platonic PCA (section
            7.9.3): ``A = alpha [Z | beta d * Y]`` with ``d_j <- ema d_j + (1 - ema) e_j``
            after each hidden layer; ``None`` disables it.
        batch_size: rows per accumulation step of the ridge solver; ``None``: all at once.
        dtype: ``torch.float32`` or ``torch.float64`` for every solve (and the returned model).
        seed: seeds the random projections / ELM weights.
        coding: class-label coding of ``Y`` (:func:`encode_targets`): ``auto`` (``sign`` for
            two classes, one output in {-1, +1}; ``one-hot`` for more, as the thesis),
            ``sign``, ``one-hot`` or ``centred``. Ignored for regression.

    Returns:
        :class:`FitResult` with the ``nn.Sequential`` and per-layer reports.
    """
    started = time.perf_counter()
    widths = [int(w) for w in widths]
    if not widths or min(widths) < 1:
        raise ConfigError(f"widths must be one or more positive layer sizes, got {widths}")
    if solver not in SOLVERS:
        raise ConfigError(f"unknown solver {solver!r}; choose one of: {', '.join(SOLVERS)}")
    if activation not in ACTIVATIONS:
        raise ConfigError(
            f"unknown activation {activation!r}; choose one of: {', '.join(ACTIVATIONS)}"
        )
    if dtype not in (torch.float32, torch.float64):
        raise ConfigError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if solver != "ridge" and batch_size is not None:
        raise ConfigError(
            f"solver {solver!r} factorises the whole layer input; use solver='ridge' to "
            "accumulate the normal equations over mini-batches, or batch_size=None"
        )
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    if tries < 1:
        raise ConfigError(f"tries must be at least 1, got {tries}")
    if ema is not None and not 0.0 <= ema < 1.0:
        raise ConfigError(f"ema must be in [0, 1), got {ema}")
    if len(x) != len(y):
        raise ShapeError(f"{len(x)} inputs but {len(y)} targets")
    if num_classes is None:
        num_classes = int(y.max()) + 1 if not y.is_floating_point() else 0
    projections = layer_projections(targets, len(widths))
    coding = resolve_coding(coding, num_classes)
    if tol is None:
        tol = PINV_TOL[dtype]
    elif tol <= 0:
        tol = None

    if isinstance(x, LazyInputs):
        _check_lazy(solver, batch_size, projections)
    else:
        x = x.reshape(len(x), -1).to(dtype)
    targets_y = encode_targets(y, num_classes, dtype, coding)
    m, k = len(x), targets_y.shape[1]
    act = ACTIVATIONS[activation]()
    stack = _Stack(x, targets_y, act, batch_size, dtype)
    generator = torch.Generator().manual_seed(seed)
    weights_d = torch.ones(m, 1, dtype=dtype)
    reports: list[LayerReport] = []

    gram = _gram(stack, targets_y)  # of [1 | X | Y]
    for index, (width, projection) in enumerate(zip(widths, projections, strict=True), start=1):
        layer_started = time.perf_counter()
        c = gram.shape[0] - k
        what = f"hidden layer {index}"
        candidates = _candidate_weights(
            projection, stack, gram, c, k, m, width, _full(stack, solver), weights_d, ema,
            alpha, beta, tries, solver, ridge, tol, generator, what,
        )  # fmt: skip
        tries_lsd, best = [], None
        for w in candidates:
            candidate_gram = _gram(stack, targets_y, extra=w)  # of [1 | Z_i | Y]
            candidate_lsd, candidate_readout = _lsd_and_readout(candidate_gram, width + 1, m)
            tries_lsd.append(candidate_lsd)
            if best is None or candidate_lsd < best[0]:
                best = (candidate_lsd, w, candidate_readout, candidate_gram)
        _, w, readout, gram = best
        stack.weights.append(w)
        # The reported LSD is the residual of the read-out summed over the data: the Gram
        # formula used to rank the tries cancels catastrophically when the fit is close.
        error, lsd, weights_d = _readout_pass(
            stack, targets_y, readout, num_classes, weights_d, ema
        )
        reports.append(
            LayerReport(
                index, width, projection, lsd, error, time.perf_counter() - layer_started, tries_lsd
            )
        )

    out_started = time.perf_counter()
    c = gram.shape[0] - k
    output_solver = _Solver(
        solver, gram[:c, :c], _full(stack, solver), ridge, tol, "the output layer"
    )
    if solver == "ridge":
        w_out = output_solver.solve_gram(gram[:c, c:])
    else:
        w_out = output_solver.solve(targets_y)
    error, mse = _output_error(stack, targets_y, w_out, num_classes)
    offset = None
    if coding == "centred":  # the class frequencies the coding took out
        offset = nn.functional.one_hot(y.long(), num_classes).to(dtype).mean(0)
    model = _to_sequential([*stack.weights, _output_to_scores(w_out, coding, offset)], act)
    reports.append(
        LayerReport(
            len(widths) + 1, k, "output", mse, error, time.perf_counter() - out_started, [mse]
        )
    )
    return FitResult(model, reports, time.perf_counter() - started, error, coding)


def _check_lazy(solver: str, batch_size: int | None, projections: list[str]) -> None:
    """Refuse what would read lazily read inputs whole into memory."""
    if solver != "ridge" or batch_size is None:
        raise ConfigError(
            "inputs read on demand (in_memory=false) are fitted a batch at a time: use "
            "solver='ridge' with a batch_size (the method's --chunk)"
        )
    if "sorted-pca" in projections:
        raise ConfigError(
            "sorted-pca picks samples along the data's first principal component, which needs "
            "every input in memory; read the data into memory (in_memory=true) or choose "
            "another projection"
        )


def _full(stack: _Stack, solver: str) -> torch.Tensor | None:
    return torch.cat([z1 for _, z1 in stack.inputs()]) if solver != "ridge" else None


def _candidate_weights(
    projection, stack, gram, c, k, m, width, full_z1, weights_d, ema,
    alpha, beta, tries, solver, ridge, tol, generator, what,
):  # fmt: skip
    """Candidate ``W`` ``(c, width)`` for one hidden layer (several only for random tries)."""
    dtype = gram.dtype
    if projection == "elm":
        return [torch.randn(c, width, generator=generator, dtype=dtype)]
    if projection == "sorted-pca":
        return [sorted_pca_weights(stack.x, width, alpha)]
    zz, zy = gram[:c, :c], gram[:c, c:]
    layer_solver = _Solver(solver, zz, full_z1, ridge, tol, what)
    if projection == "platonic-pca":
        augmented = _augmented_gram(stack, gram, c, beta, weights_d, ema)
        projections = [platonic_pca_projection(augmented, m, width)]
    else:
        projections = [
            torch.randn(c + k, width, generator=generator, dtype=dtype) for _ in range(tries)
        ]
    candidates = []
    for p in projections:
        # T = alpha [Z1 | beta Y] P, so Z1^T T = alpha [Z1^T Z1 | beta Z1^T Y] P.
        if solver == "ridge":
            candidates.append(layer_solver.solve_gram(alpha * torch.cat([zz, beta * zy], 1) @ p))
        else:
            target = alpha * torch.cat([full_z1, beta * stack.y], dim=1) @ p
            candidates.append(layer_solver.solve(target))
    return candidates


def _augmented_gram(stack, gram, c, beta, weights_d, ema) -> torch.Tensor:
    """``A^T A`` for Platonic PCA, ``A = [1 | Z | beta d * Y]`` (``alpha`` scales every
    principal component alike, so it is left out); ``d = 1`` without re-weighting."""
    if ema is None:
        scale = torch.ones(len(gram), dtype=gram.dtype)
        scale[c:] = beta
        return gram * torch.outer(scale, scale)
    return _gram(stack, beta * weights_d * stack.y)


def _errors(y: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-sample error counted by ``train_error``: 0/1 misclassification (sign of a single
    column, else argmax) or squared error."""
    if num_classes > 0 and y.shape[1] == 1:
        return ((predicted[:, 0] > 0) != (y[:, 0] > 0)).to(y.dtype)
    if num_classes > 0:
        return (predicted.argmax(dim=1) != y.argmax(dim=1)).to(y.dtype)
    return (y - predicted).pow(2).sum(dim=1)


def _readout_pass(stack, y, readout, num_classes, weights_d, ema):
    """Training error of the read-out ``[1 | Z] Q`` and the EMA update of the sample weights
    ``d_j <- ema d_j + (1 - ema) ||y_j - yhat_j||^2`` (section 7.9.3; unchanged if ``ema`` is
    None). Returns ``(error, ||Y - [1 | Z] Q||_F^2 / m, d)``."""
    q = readout.to(y.dtype)
    wrong, residual, new_d = 0.0, 0.0, weights_d.clone()
    for rows, z1 in stack.inputs():
        predicted = z1 @ q
        wrong += float(_errors(y[rows], predicted, num_classes).sum())
        squared = (y[rows] - predicted).pow(2).sum(dim=1, keepdim=True)
        residual += float(squared.sum())
        if ema is not None:
            new_d[rows] = ema * weights_d[rows] + (1.0 - ema) * squared
    return wrong / len(y), residual / len(y), new_d


def _output_error(stack, y, w_out, num_classes) -> tuple[float, float]:
    """``(train_error, ||Y - Yhat||_F^2 / m)`` of the fitted network on the training set."""
    wrong, squared = 0.0, 0.0
    for rows, z1 in stack.inputs():
        predicted = z1 @ w_out
        wrong += float(_errors(y[rows], predicted, num_classes).sum())
        squared += float((y[rows] - predicted).pow(2).sum())
    return wrong / len(y), squared / len(y)


def _to_sequential(weights: list[torch.Tensor], activation: nn.Module) -> nn.Sequential:
    """``nn.Sequential(Flatten, (Linear, activation) x hidden, Linear)`` from the solved
    ``(n_in + 1, n_out)`` matrices (row 0 = bias), in their dtype."""
    layers: list[nn.Module] = [nn.Flatten()]
    for i, w in enumerate(weights):
        linear = nn.Linear(w.shape[0] - 1, w.shape[1], dtype=w.dtype)
        with torch.no_grad():
            linear.weight.copy_(w[1:].T)
            linear.bias.copy_(w[0])
        layers.append(linear)
        if i < len(weights) - 1:
            layers.append(type(activation)())
    return nn.Sequential(*layers)
