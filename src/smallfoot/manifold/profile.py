"""Memory of one training step by phase (Sartipi & Bernal, section 4.4, figure 3 and table 5):
forward through the features (fwd1), forward through the head and the loss (fwd2), backward
through the head (bwd2), backward through the features (bwd1), then the optimizer step.

The figures come from the meter's timeline (``smallfoot.memory.measure``). The boundaries
between the features and the head are marked by an identity autograd Function placed on the
features' output: its forward runs when the head starts, its backward when the gradient enters
the features. It records how many events the meter's timeline held at those two moments.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

from smallfoot._figures import pyplot, save_figure
from smallfoot.errors import ConfigError
from smallfoot.manifold.loss import DistancePreservingLoss
from smallfoot.memory import measure
from smallfoot.models.bottleneck import BottleneckHead, FeatureNet

PHASES = ("fwd1", "fwd2", "bwd2", "bwd1", "optimizer")


def _timeline_length() -> int | None:
    """The timeline point the meter's next event will get, or ``None`` outside a measured step."""
    # The meter is the active dispatch mode during the measured step. Its raw events before the
    # first phase start are the registrations (timeline point 0); event i of the step is point
    # i - first + 1, as in the meter's own phase ranges. The warm-up step has no meter active.
    mode = _get_current_dispatch_mode()
    events, starts = getattr(mode, "events", None), getattr(mode, "phase_starts", None)
    if events is None or not starts:
        return None
    return len(events) - starts[0][1] + 1


class _Boundary(torch.autograd.Function):
    """Identity on the features' output ``z`` (a view, no allocation) that marks the timeline."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, marks: dict[str, int]) -> torch.Tensor:
        ctx.marks = marks
        index = _timeline_length()
        if index is not None:
            marks["fwd2"] = index
        return z.view_as(z)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        index = _timeline_length()
        if index is not None:
            ctx.marks["bwd1"] = index
        return grad, None


class MarkedNet(nn.Module):
    """``model`` (a :class:`FeatureNet`) returning ``(logits, L_u)`` with the boundary marker
    between its features and its head; ``L_u`` is 0 without ``regulariser``."""

    def __init__(self, model: FeatureNet, regulariser: DistancePreservingLoss | None = None):
        super().__init__()
        if not isinstance(model, FeatureNet):
            raise ConfigError("the phase profile needs a FeatureNet (features + head)")
        if regulariser is not None and not isinstance(model.head, BottleneckHead):
            raise ConfigError("the distance-preserving loss needs a BottleneckHead")
        self.model = model
        self.regulariser = regulariser
        self.marks: dict[str, int] = {}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (N, classes), scalar L_u)`` of images ``x``."""
        z = _Boundary.apply(self.model.features(x), self.marks)
        if self.regulariser is None:
            logits = self.model.head(z)
            return logits, logits.new_zeros(())
        logits, activations = self.model.head.forward_activations(z)
        return logits, self.regulariser(activations)


def _objective(output: tuple[torch.Tensor, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(output[0], target) + output[1]


@dataclass
class PhaseProfile:
    """Live bytes over one training step (``live``, one value per meter event), the phase of each
    event, the peak (bytes) of each phase, model memory (parameters + buffers, bytes) and the
    meter's whole report (``report``, a dict)."""

    live: list[int]
    phases: list[str]
    peaks: dict[str, int]
    model_bytes: int
    report: dict[str, Any]


def profile_phases(
    model: FeatureNet,
    batch: tuple[torch.Tensor, torch.Tensor],
    regulariser: DistancePreservingLoss | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> PhaseProfile:
    """Measure one training step of ``model`` (cross-entropy + ``regulariser``) on ``batch``
    ``(x (N, C, H, W), y (N,))`` with the meter and split its timeline into fwd1/fwd2/bwd2/bwd1/
    optimizer. The model and optimizer are left as they were (the meter restores them)."""
    net = MarkedNet(model, regulariser)
    report = measure(net, batch, loss_fn=_objective, optimizer=optimizer)
    timeline = report.timeline_dict()
    live = list(timeline["live"]["total"])
    starts = {name: start for name, start, _ in timeline["phases"]}
    if "fwd2" not in net.marks or "bwd1" not in net.marks:
        raise ConfigError("the phase markers did not fire; is the model's head after its features?")
    bounds = [
        ("fwd1", 0),
        ("fwd2", net.marks["fwd2"]),
        ("bwd2", starts.get("backward", len(live))),
        ("bwd1", net.marks["bwd1"]),
        ("optimizer", starts.get("optimizer", len(live))),
    ]
    points = [start for _, start in bounds]
    if points != sorted(points) or points[-1] > len(live):
        raise RuntimeError(f"phase boundaries {bounds} do not fit the meter's timeline")
    phases = []
    for i, (name, start) in enumerate(bounds):
        end = bounds[i + 1][1] if i + 1 < len(bounds) else len(live)
        phases += [name] * max(0, end - start)
    peaks = {
        name: max((v for v, p in zip(live, phases, strict=True) if p == name), default=0)
        for name in PHASES
    }
    return PhaseProfile(live, phases, peaks, report.parameters + report.buffers, report.to_dict())


COLOURS = {
    "fwd1": "tab:red",
    "fwd2": "tab:green",
    "bwd2": "gold",
    "bwd1": "tab:purple",
    "optimizer": "tab:gray",
}


def plot_profiles(profiles: dict[str, PhaseProfile], path: str | Path) -> Path:
    """Figure 3: live memory (MiB) over one step for each profile (one panel each), coloured by
    phase (fwd1 red, fwd2 green, bwd2 yellow, bwd1 purple, optimizer grey). Writes a PNG."""
    plt = pyplot()

    fig, axes = plt.subplots(1, len(profiles), figsize=(3.6 * len(profiles), 3), squeeze=False)
    top = max(max(p.live) for p in profiles.values()) / 2**20 * 1.05
    for ax, (title, profile) in zip(axes[0], profiles.items(), strict=True):
        mib = [v / 2**20 for v in profile.live]
        for name in PHASES:
            xs = [i for i, p in enumerate(profile.phases) if p == name]
            if xs:
                ax.fill_between(
                    xs, [mib[i] for i in xs], color=COLOURS[name], step="post", label=name
                )
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("meter event")
        ax.set_ylim(0, top)
    axes[0][0].set_ylabel("live memory (MiB)")
    axes[0][-1].legend(fontsize=7)
    path = Path(path)
    save_figure(fig, path, dpi=110)
    return path
