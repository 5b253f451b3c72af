"""``smallfoot train --method subspace --sample-epochs 3 --samples 30 --dim 15 --subspace-optimizer pbfgs``.

Stage 1 trains with the run's optimizer and schedule for ``sample_epochs`` epochs while a
:class:`TrajectorySampler` stores the parameters; DLDR turns the samples into a basis
(``run_dir/basis.pt``); stage 2 continues from the last weights (``start = "first"``: from the
first sample, the DLDR authors' choice) for the remaining epochs with P-SGD or P-BFGS inside
the basis' span. Each stage keeps its checkpoint in
``run_dir/sampling`` and ``run_dir/subspace``, so ``--resume`` continues the stage it stopped in;
``run_dir/metrics.jsonl`` holds both stages' epochs with a ``stage`` key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from smallfoot._io import atomic_torch_save
from smallfoot.config import apply_overrides
from smallfoot.errors import ConfigError, TrainingInterrupted
from smallfoot.memory.meter import MemoryReport
from smallfoot.methods import (
    Method,
    RunContext,
    TrainOutcome,
    example_batch,
    load_initial_weights,
    register_method,
)
from smallfoot.subspace.basis import Basis, dldr
from smallfoot.subspace.optim import PBFGS, PSGD
from smallfoot.subspace.trajectory import (
    TrajectorySampler,
    TrajectoryStore,
    parameter_layout,
    set_params,
)
from smallfoot.train.batchnorm import RecalibrateBatchNorm
from smallfoot.train.rundir import MetricsLog, resume_hint
from smallfoot.train.trainer import Trainer, make_optimizer

# Above this many bytes of samples, "auto" storage writes them to a disk memmap.
RAM_LIMIT = 1 << 30


@dataclass
class SubspaceOptions:
    """Options of ``--method subspace``."""

    sample_epochs: int = 2
    """epochs of ordinary training whose trajectory is sampled (the rest train in the subspace)"""
    samples: int = 20
    """parameter vectors sampled, evenly over the sampling epochs (rounded to a multiple of them)"""
    initial_sample: bool = False
    """also sample the weights before the first step (the DLDR authors sample the initial
    weights and the end of every epoch: --samples equal to --sample-epochs plus this)"""
    start: Literal["last", "first"] = "last"
    """where the subspace stage starts: the sampling stage's last weights, or the first
    sample (the authors': with --initial-sample true, the initial weights)"""
    dim: int = 15
    """subspace dimension d (at most the number of samples - 1)"""
    subspace_optimizer: Literal["psgd", "pbfgs"] = "pbfgs"
    """optimizer inside the subspace: psgd or pbfgs (--optimizer picks the sampling stage's)"""
    subspace_lr: float | None = None
    """P-SGD learning rate (default: the run's --lr) or P-BFGS first trial step (default: 1)"""
    psgd_drops: list[float] | None = None
    """fractions of the subspace stage at which P-SGD's rate drops by the run's --gamma, as
    the authors' train_psgd.py drops it at 30 of 40 epochs (--psgd-drops 0.75); none: the
    run's --schedule"""
    psgd_weight_decay: float | None = None
    """P-SGD's weight decay (default: the run's --weight-decay, which the sampling stage uses;
    the authors' train_psgd.py uses none: --psgd-weight-decay 0); refused with P-BFGS"""
    pbfgs_batch_size: int | None = 1024
    """mini-batch of the P-BFGS stage, as the authors' scripts use (none: the run's
    --batch-size); its line search and curvature pair fit this one batch"""
    line_search: Literal["backtrack", "interpolate"] = "backtrack"
    """P-BFGS's line search: backtrack (the authors': steps 1, 0.4, 0.16, ... until the loss
    drops by 0.4 x step x slope, never longer than 1) or interpolate (secant and quadratic
    trials, sufficient decrease 1e-4, up to 10x longer)"""
    curvature: Literal["same-batch", "next-batch"] = "same-batch"
    """P-BFGS's curvature pair y: both gradients on the step's own batch (same-batch) or
    the gradients of consecutive batches (next-batch, algorithm 2 as written)"""
    recalibrate_bn: bool = True
    """recompute batch-norm running statistics over the training set after every subspace
    epoch: P-BFGS's long steps leave the running averages behind the weights"""
    storage: Literal["auto", "ram", "disk"] = "auto"
    """where samples live: ram, disk (memmap in the run directory) or auto (disk above 1 GiB)"""
    basis: str | None = field(default=None)
    """reuse a saved basis file instead of sampling (stage 1 is skipped)"""

    def validate(self) -> None:
        """Raise ``ConfigError`` for values out of range."""
        if self.sample_epochs < 1 and self.basis is None:
            raise ConfigError(f"--sample-epochs must be at least 1, got {self.sample_epochs}")
        if self.dim < 1 or self.samples < 2:
            raise ConfigError(
                f"--dim must be >= 1 and --samples >= 2, got {self.dim} and {self.samples}"
            )
        if self.basis is None and self.dim > self.sample_count() - 1:
            need = self.dim + 1 - self.initial_sample
            raise ConfigError(
                f"--dim {self.dim} needs at least {need} --samples (got {self.samples}"
                f"{', plus the initial weights' if self.initial_sample else ''})"
            )
        if self.subspace_lr is not None and not self.subspace_lr > 0:
            raise ConfigError(f"--subspace-lr must be positive, got {self.subspace_lr}")
        if self.pbfgs_batch_size is not None and self.pbfgs_batch_size < 1:
            raise ConfigError(
                f"--pbfgs-batch-size must be positive (or none), got {self.pbfgs_batch_size}"
            )
        if self.psgd_weight_decay is not None and self.psgd_weight_decay < 0:
            raise ConfigError(
                f"--psgd-weight-decay must be >= 0 (or none), got {self.psgd_weight_decay}"
            )
        if self.psgd_drops is not None and (
            not self.psgd_drops or not all(0 < f < 1 for f in self.psgd_drops)
        ):
            raise ConfigError(
                "--psgd-drops must be fractions of the subspace stage in (0, 1), e.g. "
                f"--psgd-drops 0.75; got {self.psgd_drops}"
            )
        psgd_only = {  # flag: (value, what it sets, why P-BFGS has no use for it)
            "--psgd-weight-decay": (
                self.psgd_weight_decay,
                "weight decay",
                "its loss has no weight decay",
            ),
            "--psgd-drops": (self.psgd_drops, "schedule", "its line search picks each step"),
        }
        for flag, (value, sets, why) in psgd_only.items():
            if value is not None and self.subspace_optimizer != "psgd":
                raise ConfigError(
                    f"{flag} sets P-SGD's {sets}, but --subspace-optimizer is "
                    f"{self.subspace_optimizer} ({why}); drop {flag} or use "
                    "--subspace-optimizer psgd"
                )
        if self.basis is not None and self.start == "first":
            raise ConfigError(
                "--start first starts from the first sample, but --basis skips sampling; "
                "drop --start first (the run starts from --init or a fresh model)"
            )

    def samples_per_epoch(self) -> int:
        """Samples taken during each sampling epoch (``samples`` spread evenly, at least 1)."""
        return max(1, round(self.samples / max(self.sample_epochs, 1)))

    def sample_count(self) -> int:
        """Parameter vectors the sampling stage stores: the per-epoch samples of every
        sampling epoch, plus the initial weights with ``initial_sample``."""
        return self.samples_per_epoch() * self.sample_epochs + self.initial_sample


def make_subspace_optimizer(
    model: nn.Module,
    basis: Basis,
    name: str,
    lr: float,
    momentum: float,
    weight_decay: float,
    line_search: str = "interpolate",
    curvature: str = "next-batch",
) -> torch.optim.Optimizer:
    """P-SGD (momentum and weight decay as given) or P-BFGS over ``model``'s trainable
    parameters; ``line_search = "backtrack"`` is the authors' search (sufficient decrease 0.4,
    shrink 0.4, at most 20 trials), see :class:`PBFGS` for both arguments."""
    basis.check(model)
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    if name == "psgd":
        return PSGD(params, basis.to(device), lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "pbfgs":
        search = {"c1": 0.4, "shrink": 0.4, "max_evals": 20} if line_search == "backtrack" else {}
        return PBFGS(
            params,
            basis.to(device),
            lr=lr,
            buffers=model.buffers(),
            line_search=line_search,
            curvature=curvature,
            **search,
        )
    raise ConfigError(f"unknown subspace optimizer {name!r}; choose psgd or pbfgs")


def measure_step(model, batch, loss_fn, optimizer) -> MemoryReport:
    """The meter's report of one training step; P-BFGS's line search runs inside its step.
    On a model and batch built under a ``FakeTensorMode`` the step is estimated (P-SGD or
    the run's optimizer only: P-BFGS's line search needs real loss values)."""
    from smallfoot.memory import estimate, measure

    fake = isinstance(batch[0], FakeTensor)
    meter = estimate if fake else measure
    if getattr(optimizer, "needs_closure", False):
        if fake:
            raise ConfigError(
                "--estimate cannot run P-BFGS's line search, which needs real loss values; "
                "measure a real step (drop --estimate) or estimate --subspace-optimizer psgd"
            )
        x, y = batch

        def closure() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            return loss

        step = optimizer.step
        optimizer.step = lambda: step(closure)  # the meter calls step() without arguments
        try:
            return meter(model, batch, loss_fn=loss_fn, optimizer=optimizer)
        finally:
            del optimizer.step
    return meter(model, batch, loss_fn=loss_fn, optimizer=optimizer)


def step_memory(model, batch, loss_fn, optimizer) -> dict[str, Any]:
    """:func:`measure_step` as a JSON-ready dict."""
    return measure_step(model, batch, loss_fn, optimizer).to_dict()


def random_basis(model: nn.Module, dim: int) -> Basis:
    """An orthonormal basis of ``dim`` random directions with ``model``'s parameter layout:
    the shapes DLDR would give, for measuring a subspace step without sampling first. Under
    a ``FakeTensorMode`` its tensors are fake too."""
    layout = parameter_layout(model)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    P = torch.linalg.qr(torch.randn(n, dim))[0]  # (n, d)
    ones = torch.ones(dim, dtype=torch.float64)
    return Basis(P, torch.zeros(n), ones, ones / dim, layout)


def interrupted(done: int, epochs: int, run_dir: Path | None) -> str:
    """What an interrupted run keeps, after ``done`` of ``epochs`` finished epochs (counted over
    both stages), and the command that continues it."""
    where = f"interrupted during epoch {done + 1} of {epochs}"
    if run_dir is None:
        return where
    if done == 0:
        return f"{where}; no epoch finished, so `smallfoot train --resume {run_dir}` starts over"
    kept = "epoch 1 is" if done == 1 else f"epochs 1-{done} are"
    return f"{where}; {kept} kept in {run_dir}{resume_hint(run_dir)}"


def pbfgs_statistics(optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """P-BFGS's step count and skipped curvature updates (empty for other optimizers)."""
    if not isinstance(optimizer, PBFGS):
        return {}
    state = optimizer.state[optimizer.param_groups[0]["params"][0]]
    return {
        "pbfgs_steps": state.get("steps", 0),
        "skipped_updates": state.get("skipped_updates", 0),
    }


@register_method
class Subspace(Method):
    """DLDR + P-SGD / P-BFGS: sample ordinary training, then train in a d-dimensional subspace."""

    name = "subspace"
    user_model = "any module"
    description = (
        "sample the SGD trajectory, extract a d-dim basis (DLDR), continue with P-SGD or "
        "P-BFGS in it (Li et al., *Low dimensional landscape hypothesis is true: DNNs can be trained in tiny subspaces*)"
    )
    Options = SubspaceOptions
    changes_optimizer = True
    staged = True
    online_filters = False
    streams = False

    def sampling_epochs(self) -> int:
        """Epochs of the sampling stage: ``sample_epochs``, or 0 when a saved basis is reused."""
        return 0 if self.options.basis is not None else self.options.sample_epochs

    def subspace_optimizer(
        self, model: nn.Module, basis: Basis, config: Any
    ) -> torch.optim.Optimizer:
        """The stage-2 optimizer of ``model`` in ``basis`` with this method's options; the
        trainer ``config`` gives P-SGD's default rate, momentum and weight decay."""
        options: SubspaceOptions = self.options
        pbfgs = options.subspace_optimizer == "pbfgs"
        return make_subspace_optimizer(
            model,
            basis,
            options.subspace_optimizer,
            options.subspace_lr or (1.0 if pbfgs else config.lr),
            config.momentum,
            config.weight_decay if options.psgd_weight_decay is None else options.psgd_weight_decay,
            line_search=options.line_search,
            curvature=options.curvature,
        )

    def subspace_batch_size(self, batch_size: int) -> int:
        """The stage-2 batch size: ``pbfgs_batch_size`` for P-BFGS (when set), else ``batch_size``."""
        options: SubspaceOptions = self.options
        if options.subspace_optimizer == "pbfgs" and options.pbfgs_batch_size is not None:
            return options.pbfgs_batch_size
        return batch_size

    def subspace_schedule(self, config: Any) -> dict[str, Any]:
        """The stage-2 schedule fields of the run ``config``: constant for P-BFGS (its line
        search chooses each step; a decaying trial step would only shorten it), x ``gamma``
        at ``psgd_drops`` for P-SGD when set, else the run's own."""
        options: SubspaceOptions = self.options
        if options.subspace_optimizer == "pbfgs":
            return {"schedule": "constant"}
        if options.psgd_drops is not None:
            return {"schedule": "multistep", "milestones": list(options.psgd_drops)}
        return {"schedule": config.schedule, "milestones": config.milestones}

    def min_epochs(self) -> int:
        """The fewest ``--epochs`` a run can have: the sampling epochs plus one in the subspace."""
        return self.sampling_epochs() + 1

    def check_run(self, ctx: RunContext) -> None:
        """Refuse ``--epochs`` that leave no epoch for the subspace after sampling."""
        need, epochs = self.min_epochs(), ctx.config.epochs
        if epochs < need:
            raise ConfigError(
                f"--method subspace needs at least {need} epochs ({self.sampling_epochs()} "
                f"sampling + 1 in the subspace), got --epochs {epochs}; use --epochs {need}"
            )

    def adapt(self, config: Any, input_shape: tuple[int, ...]) -> tuple[Any, list[str]]:
        """Raise ``epochs`` to :meth:`min_epochs` when the run has fewer (for ``compare``)."""
        need = self.min_epochs()
        if config.epochs >= need:
            return config, []
        note = (
            f"epochs {config.epochs} -> {need}: {self.sampling_epochs()} sampling epochs "
            "+ 1 in the subspace"
        )
        return apply_overrides(config, {"epochs": need}), [note]

    def step_memory(self, ctx: RunContext, *, fake: bool = False) -> MemoryReport:
        """The larger (by peak) of the two stages' steps, named by ``report.stage``: sampling
        (the run's optimizer, as the base method measures it) and subspace (P-SGD or P-BFGS
        over a random orthonormal basis of ``dim`` directions, the size DLDR gives; P-BFGS's
        line-search evaluations included). The samples' store, outside the step, is not in it."""
        options: SubspaceOptions = self.options
        reports = {}
        if self.sampling_epochs():
            reports["sampling"] = super().step_memory(ctx, fake=fake)
        loss_fn, _ = self.make_loss(ctx)
        batch, shape = self.subspace_batch_size(ctx.config.batch_size), ctx.input_shape
        torch.manual_seed(ctx.config.seed)
        with FakeTensorMode() if fake else contextlib.nullcontext():
            net = self.build_model(ctx)
            optimizer = self.subspace_optimizer(
                net, random_basis(net, options.dim), ctx.train_config()
            )
            x, y = torch.randn(batch, *shape), torch.randint(ctx.num_classes, (batch,))
        reports["subspace"] = measure_step(net, (x, y), loss_fn, optimizer)
        stage = max(reports, key=lambda name: reports[name].peak)
        report = reports[stage]
        report.stage = stage
        return report

    def train(self, ctx: RunContext) -> TrainOutcome:
        """Sample, extract the basis, train in the subspace; the memory report is the larger stage's."""
        options: SubspaceOptions = self.options
        config = ctx.train_config()
        self.check_run(ctx)
        sample_epochs = self.sampling_epochs()
        model = self.build_model(ctx)
        if ctx.config.init:
            load_initial_weights(model, ctx.config.init)
        loss_fn, predict_fn = self.make_loss(ctx)
        run_dir = Path(ctx.run_dir) if ctx.run_dir is not None else None
        stage_dir = (lambda name: run_dir / name) if run_dir is not None else (lambda name: None)

        def trainer(stage_config, optimizer=None, callbacks=(), name=None) -> Trainer:
            return Trainer(
                model,
                ctx.train_set,
                ctx.test_set,
                stage_config,
                loss_fn,
                optimizer=optimizer,
                callbacks=callbacks,
                run_dir=stage_dir(name),
                progress=ctx.config.progress,
                predict_fn=predict_fn,
            )

        def resumable(t: Trainer) -> Trainer:
            if ctx.resume and t.run_dir is not None and t.checkpoint_path().exists():
                t.load_checkpoint()
            if t.run_dir is not None:
                t.run_dir.mkdir(parents=True, exist_ok=True)
            return t

        def fit(stage: Trainer, offset: int) -> None:
            # the stage's Trainer numbers epochs within the stage and names its own directory
            try:
                stage.fit()
            except TrainingInterrupted:
                message = interrupted(offset + stage.epoch, ctx.config.epochs, run_dir)
                raise TrainingInterrupted(message) from None

        basis_path = run_dir / "basis.pt" if run_dir is not None else None
        first_path = run_dir / "first_sample.pt" if run_dir is not None else None
        sampling_history: list[dict[str, Any]] = []
        if options.basis is not None:
            basis = Basis.load(options.basis).truncate(options.dim)
        elif ctx.resume and basis_path is not None and basis_path.exists():
            basis = Basis.load(basis_path)
            # stage 1 finished: its last weights and epochs are in its checkpoint
            state = torch.load(
                stage_dir("sampling") / "checkpoint.pt", map_location=ctx.device, weights_only=False
            )
            model.load_state_dict(state["model"])
            sampling_history = state["history"]
            if options.start == "first":
                set_params(self._trainable(model), torch.load(first_path, weights_only=True))
        else:
            sampling_history, basis, first = self._sample(
                model, config, trainer, resumable, fit, run_dir
            )
            if options.start == "first":
                # the authors restart from their first sample; batch-norm statistics are
                # recomputed after the first subspace epoch (recalibrate_bn)
                set_params(self._trainable(model), first)
                if first_path is not None:
                    atomic_torch_save(first, first_path)
            if basis_path is not None:
                basis.save(basis_path)
        basis.check(model)

        subspace_config = dataclasses.replace(
            config,
            epochs=ctx.config.epochs - sample_epochs,
            batch_size=self.subspace_batch_size(config.batch_size),
            seed=config.seed + 1,
            **self.subspace_schedule(config),
        )
        optimizer = self.subspace_optimizer(model, basis, config)
        callbacks = [RecalibrateBatchNorm()] if options.recalibrate_bn else []
        subspace = resumable(trainer(subspace_config, optimizer, callbacks, name="subspace"))
        fit(subspace, sample_epochs)

        history = [{**m, "stage": "sampling"} for m in sampling_history]
        history += [
            {**m, "epoch": m["epoch"] + sample_epochs, "stage": "subspace"}
            for m in subspace.history
        ]
        MetricsLog(run_dir).rewrite(history)
        memory = None
        if ctx.config.measure_memory:
            sgd = make_optimizer(model, config) if sample_epochs else None
            memory = self._memory(ctx, model, loss_fn, sgd, subspace.optimizer, basis)
        extra = {
            "subspace": {
                "optimizer": options.subspace_optimizer,
                "dim": basis.dim,
                "samples": len(basis.explained_variance_ratio),
                "sample_epochs": sample_epochs,
                "explained_variance": float(basis.explained_variance_ratio[: basis.dim].sum()),
                "explained_variance_ratio": [
                    float(r) for r in basis.explained_variance_ratio[: basis.dim]
                ],
                **pbfgs_statistics(subspace.optimizer),
            }
        }
        return TrainOutcome(model, history[-1], history, memory, extra)

    @staticmethod
    def _trainable(model: nn.Module) -> list[torch.Tensor]:
        return [p for p in model.parameters() if p.requires_grad]

    def _sample(self, model, config, trainer, resumable, fit, run_dir):
        """Stage 1: ordinary training with a trajectory sampler; returns (history, basis,
        the first sample ``(n,)``)."""
        options: SubspaceOptions = self.options
        size = sum(p.numel() for p in model.parameters() if p.requires_grad)
        per_epoch, capacity = options.samples_per_epoch(), options.sample_count()
        storage = options.storage
        if storage == "auto":
            storage = "disk" if capacity * size * 4 > RAM_LIMIT else "ram"
        path = None
        scratch = None
        if storage == "disk":
            if run_dir is not None:
                path = run_dir / "trajectory.f32"
            else:
                scratch = tempfile.TemporaryDirectory(prefix="smallfoot-trajectory-")
                path = Path(scratch.name) / "trajectory.f32"
        try:
            store = TrajectoryStore(size, capacity, path)
            sampler = TrajectorySampler(store, per_epoch=per_epoch, initial=options.initial_sample)
            sampling = resumable(
                trainer(
                    dataclasses.replace(config, epochs=options.sample_epochs),
                    callbacks=[sampler],
                    name="sampling",
                )
            )
            fit(sampling, 0)
            basis = dldr(store, min(options.dim, len(store) - 1), parameter_layout(model))
            first = store.sample(0)
        finally:
            if scratch is not None:
                scratch.cleanup()
        if basis.dim < options.dim:
            raise ConfigError(
                f"only {len(store)} samples were taken, too few for --dim {options.dim}; "
                "raise --samples or --sample-epochs"
            )
        return sampling.history, basis, first

    def _memory(self, ctx, model, loss_fn, sgd, optimizer, basis) -> dict[str, Any]:
        """The meter's step report of the larger stage (by peak) plus ``stage``, both stages'
        peaks and optimizer states, and the basis' bytes (``sgd`` None: no sampling stage)."""
        from smallfoot.memory import unique_storage_bytes

        size = self.subspace_batch_size(ctx.config.batch_size)
        batch = example_batch(ctx.train_set, size, ctx.device)
        reports = {"subspace": step_memory(model, batch, loss_fn, optimizer)}
        if sgd is not None:
            batch = example_batch(ctx.train_set, ctx.config.batch_size, ctx.device)
            reports["sampling"] = step_memory(model, batch, loss_fn, sgd)
        stage = max(reports, key=lambda name: reports[name]["peak"])
        return {
            **reports[stage],
            "stage": stage,
            "stage_peaks": {name: r["peak"] for name, r in reports.items()},
            "stage_optimizer_state": {name: r["optimizer_state"] for name, r in reports.items()},
            "basis_bytes": unique_storage_bytes([basis.P, basis.mean]),
        }
