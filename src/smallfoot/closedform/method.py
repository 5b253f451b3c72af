"""The ``closedform`` method: fit the run's ``mlp`` with Platonic projections instead of SGD."""

from __future__ import annotations

import dataclasses
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from smallfoot._io import atomic_torch_save
from smallfoot.closedform.platonic import (
    BETA,
    RIDGE,
    FitResult,
    fit_mlp,
    layer_projections,
    predicted_classes,
)
from smallfoot.data import LazyInputs
from smallfoot.errors import ConfigError
from smallfoot.memory.meter import MemoryReport
from smallfoot.methods import Method, RunContext, TrainOutcome, register_method

DTYPES = {"float32": torch.float32, "float64": torch.float64}
MODEL_FILE = "model.pt"
"""The fitted state dict in a run directory; ``smallfoot train --init`` accepts it."""
WIDTHS = (256, 128)
"""Hidden-layer widths of the fitted mlp when the run gives none."""


def reset_process_peak() -> bool:
    """Reset the process' resident-set high-water mark (Linux ``/proc/self/clear_refs``, 5).

    Returns False where that is not possible; :func:`process_peak_bytes` then reports the
    lifetime peak (``resource.getrusage``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def process_peak_bytes() -> tuple[int, str]:
    """``(bytes, source)``: the process' peak resident memory since the last reset (``VmHWM``
    of ``/proc/self/status``), else the lifetime peak ``resource.getrusage(...).ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024, "VmHWM (/proc/self/status)"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss (lifetime)"


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, x, y: torch.Tensor, num_classes: int, batch_size: int = 8192
) -> dict:
    """``{"accuracy", "loss"}`` of a fitted ``model`` on ``(x, y)`` (``x`` a tensor or lazily
    read inputs, ``batch_size`` rows at a time): classification accuracy (0-1) and mean
    squared error ``||Y - Yhat||_F^2 / m`` against one-hot targets (or against ``y`` in
    {-1, +1} when the model has the single output of the binary ``sign`` coding), or, for
    regression (``num_classes`` 0), accuracy None and the mean squared error."""
    dtype = next(model.parameters()).dtype
    out = torch.cat([model(x[i : i + batch_size].to(dtype)) for i in range(0, len(x), batch_size)])
    if num_classes == 0:
        target = y.reshape(len(y), -1).to(dtype)
        return {"accuracy": None, "loss": float((out - target).pow(2).sum() / len(y))}
    if out.shape[1] == 1:
        target = (2 * y.to(dtype) - 1)[:, None]
    else:
        target = torch.nn.functional.one_hot(y, num_classes).to(dtype)
    return {
        "accuracy": float((predicted_classes(out) == y).double().mean()),
        "loss": float((out - target).pow(2).sum() / len(y)),
    }


def two_class_state(model: torch.nn.Sequential) -> dict[str, torch.Tensor]:
    """The float32 state dict of a fitted model in the ``mlp`` layout of its classes: a single
    ``sign`` output ``f`` becomes the two logits ``(-f / 2, f / 2)`` (softmax = sigmoid(f),
    same decisions), so ``smallfoot train --model mlp --init`` loads it."""
    state = {k: v.float() for k, v in model.state_dict().items()}
    last = next(name for name in reversed(state) if name.endswith(".weight"))
    if state[last].shape[0] == 1:
        bias = last.removesuffix("weight") + "bias"
        state[last] = torch.cat([-state[last], state[last]]) / 2
        state[bias] = torch.cat([-state[bias], state[bias]]) / 2
    return state


@register_method
class ClosedForm(Method):
    """Closed-form fit of an ``mlp`` (thesis ch. 7): one least-squares solve per layer."""

    name = "closedform"
    user_model = "refused: it fits an MLP (--model mlp)"
    description = "closed-form MLP fit with Platonic projections (no gradients; model mlp)"
    staged = True
    online_filters = False
    streams = False

    @dataclass
    class Options:
        targets: str = "random"
        """random, platonic-pca, sorted-pca, deterministic or elm"""
        activation: str = "relu"
        """relu, tanh, celu, sigmoid or identity (the mlp model itself uses relu)"""
        alpha: float = 1.0
        """target scale alpha in T = alpha [Z | beta Y] P"""
        beta: float = BETA
        """weight beta of the labels in the augmented matrix"""
        tries: int = 1
        """random projections drawn per layer; the lowest-LSD one is kept"""
        solver: str = "ridge"
        """ridge (mini-batch normal equations), pinv or lstsq (whole matrix in memory)"""
        ridge: float = RIDGE
        """L2 penalty lambda of the ridge solver"""
        tol: float | None = None
        """absolute singular-value cut-off of pinv (none: 1e-5 in float32, PyTorch's in
        float64; 0: PyTorch's)"""
        coding: str = "auto"
        """class-label coding: auto (sign for two classes, one-hot for more), sign, one-hot,
        centred"""
        ema: float | None = None
        """lambda_EMA of per-sample error re-weighting for platonic-pca (e.g. 0.2)"""
        chunk: int | None = 10000
        """rows per normal-equation accumulation step (ridge); none = all at once"""
        dtype: str = "float32"
        """float32 or float64"""
        layers: list[str] = field(default_factory=list)
        """one projection per hidden layer (overrides targets)"""

        def validate(self) -> None:
            """Reject an unknown dtype (the other options are checked by fit_mlp)."""
            if self.dtype not in DTYPES:
                raise ConfigError(f"dtype must be float32 or float64, got {self.dtype!r}")

    def check_run(self, ctx: RunContext) -> None:
        """Refuse a model other than ``mlp`` (or mlp options other than ``widths``): the fit
        solves one least-squares problem per fully connected layer."""
        if ctx.config.model != "mlp":
            raise ConfigError(
                f"method closedform fits the 'mlp' model, not {ctx.config.model!r}; "
                f"use --model mlp (layer widths: --model-opt widths={','.join(map(str, WIDTHS))})"
            )
        unknown = set(ctx.config.model_options) - {"widths"}
        if unknown:
            raise ConfigError(
                f"closedform takes only the mlp option 'widths', not {', '.join(sorted(unknown))}"
            )
        if isinstance(ctx.train_set.x, LazyInputs):
            self._check_lazy(ctx)

    def _check_lazy(self, ctx: RunContext) -> None:
        """Refuse, naming the flags, what would read lazily read inputs whole into memory."""
        o = self.options
        if o.solver != "ridge" or o.chunk is None:
            raise ConfigError(
                f"--dataset {ctx.config.dataset} is read on demand (in_memory=false), and the "
                "closed-form fit reads it a chunk at a time: use --solver ridge with --chunk N "
                "(e.g. --chunk 10000), or drop in_memory=false"
            )
        widths = ctx.config.model_options.get("widths", WIDTHS)
        depth = 1 if isinstance(widths, int) else max(len(widths), 1)
        first = (list(o.layers) or layer_projections(o.targets, depth))[0]
        if first == "sorted-pca":
            flag = f"--layers {','.join(o.layers)}" if o.layers else f"--targets {o.targets}"
            raise ConfigError(
                f"{flag} starts with Sorted PCA, which picks samples along the data's first "
                f"principal component and needs every input in memory, and --dataset "
                f"{ctx.config.dataset} is read on demand (in_memory=false); use --targets "
                "random or platonic-pca, or drop in_memory=false"
            )

    def adapt(self, config: Any, input_shape: tuple[int, ...]) -> tuple[Any, list[str]]:
        """Any other model becomes an ``mlp`` with the default widths (its options dropped),
        with a note saying so; an ``mlp`` run is unchanged."""
        if config.model == "mlp":
            return config, []
        widths = list(WIDTHS)
        adapted = dataclasses.replace(config, model="mlp", model_options={"widths": widths})
        note = (
            f"fits an mlp with hidden widths {','.join(map(str, widths))} instead of "
            f"{config.model}: the closed-form fit solves fully connected layers only"
        )
        return adapted, [note]

    def step_memory(self, ctx: RunContext, *, fake: bool = False) -> MemoryReport:
        """Refuse: a closed-form fit has no backprop step to measure."""
        raise ConfigError(
            "method closedform has no training step to measure (one least-squares solve per "
            "layer, no backprop); its memory is the process peak that `smallfoot train "
            "--method closedform --model mlp` and `smallfoot fit` report"
        )

    def fit(self, ctx: RunContext) -> FitResult:
        """Run :func:`fit_mlp` on the training set with the run's widths and these options."""
        self.check_run(ctx)
        widths = ctx.config.model_options.get("widths", WIDTHS)
        widths = (widths,) if isinstance(widths, int) else tuple(widths)
        o = self.options
        return fit_mlp(
            ctx.train_set.x,
            ctx.train_set.y,
            widths,
            num_classes=ctx.num_classes,
            activation=o.activation,
            targets=list(o.layers) if o.layers else o.targets,
            alpha=o.alpha,
            beta=o.beta,
            tries=o.tries,
            solver=o.solver,
            ridge=o.ridge,
            tol=o.tol,
            ema=o.ema,
            batch_size=o.chunk if o.solver == "ridge" else None,
            dtype=DTYPES[o.dtype],
            seed=ctx.config.seed,
            coding=o.coding,
        )

    def train(self, ctx: RunContext) -> TrainOutcome:
        """Fit, evaluate, save ``model.pt`` (float32 state dict of the ``mlp`` layout) and
        report the process' peak resident memory during the fit."""
        reset = reset_process_peak()
        result = self.fit(ctx)
        peak, source = process_peak_bytes()
        rows = self.options.chunk or 8192
        train = evaluate(result.model, ctx.train_set.x, ctx.train_set.y, ctx.num_classes, rows)
        test = evaluate(result.model, ctx.test_set.x, ctx.test_set.y, ctx.num_classes, rows)
        if ctx.run_dir is not None:
            atomic_torch_save(two_class_state(result.model), Path(ctx.run_dir) / MODEL_FILE)
        metrics: dict[str, Any] = {
            "train_accuracy": train["accuracy"],
            "test_accuracy": test["accuracy"],
            "train_loss": train["loss"],
            "test_loss": test["loss"],
        }
        memory = {
            "process_peak": peak,
            "source": source if reset else "ru_maxrss (lifetime of the process)",
            "stage": "closed-form fit",
        }
        extra = {
            "epochs": 0,  # no pass of gradient descent
            "fit": result.to_dict(),
            "loss_kind": "mse",
            **({"model_file": str(Path(ctx.run_dir) / MODEL_FILE)} if ctx.run_dir else {}),
        }
        return TrainOutcome(result.model, metrics, [], memory, extra)
