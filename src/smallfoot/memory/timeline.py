"""The timeline of one measured step: bytes live after every allocation or release, stacked
by category, with the forward/backward/optimizer phases and the forward's module boundaries
marked (the kind of figure in section 4.4 of Sartipi, Bernal, *Manifold regularization for memory-efficient training of deep neural networks*)."""

from __future__ import annotations

import os
from pathlib import Path

from smallfoot._figures import figure
from smallfoot._io import atomic_write_json
from smallfoot.memory.meter import CATEGORIES, MemoryReport

PHASE_COLOURS = {"forward": "#dbe9f6", "backward": "#fde2cf", "optimizer": "#e2f0d9"}


def save_timeline(report: MemoryReport, path: str | os.PathLike) -> Path:
    """Write the report (``to_dict``) and its timeline (``timeline_dict``, bytes per event)
    as one JSON file."""
    return atomic_write_json(path, {"report": report.to_dict(), "timeline": report.timeline})


def plot_timeline(report: MemoryReport, path: str | os.PathLike, title: str | None = None) -> Path:
    """Save a PNG of the live memory (MiB) over the step's events, stacked by category, phases
    shaded, forward module boundaries ticked (named when there are at most 40), peak marked."""

    timeline = report.timeline
    live = timeline["live"]
    steps = list(range(len(live["total"])))
    with figure(path, size=(10, 4.5)) as (fig, ax):
        for name, start, end in timeline["phases"]:
            ax.axvspan(start - 0.5, end - 0.5, color=PHASE_COLOURS.get(name, "#eeeeee"), lw=0)
            ax.text(
                (start + end) / 2,
                1.0,
                name,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=9,
            )
        layers = [[v / 2**20 for v in live[c]] for c in CATEGORIES]
        ax.stackplot(
            steps, layers, labels=[c.replace("_", " ") for c in CATEGORIES], alpha=0.85, step="post"
        )
        modules = timeline["modules"]
        for name, start, _ in modules:
            ax.axvline(start - 0.5, color="grey", lw=0.4, ls=":")
            if len(modules) <= 40:
                ax.text(
                    start,
                    0.01,
                    name,
                    rotation=90,
                    fontsize=6,
                    transform=ax.get_xaxis_transform(),
                    va="bottom",
                    color="dimgrey",
                )
        ax.plot([timeline["peak_index"]], [report.peak / 2**20], "kv")
        ax.annotate(
            f"peak {report.peak / 2**20:.2f} MiB ({report.peak_phase})",
            (timeline["peak_index"], report.peak / 2**20),
            textcoords="offset points",
            xytext=(6, 4),
            fontsize=8,
        )
        ax.set_xlabel("allocation / release event of the measured step")
        ax.set_ylabel("live memory (MiB)")
        ax.set_xlim(-0.5, max(len(steps) - 0.5, 0.5))
        ax.set_ylim(0, report.peak / 2**20 * 1.12 or 1)
        kind = "estimate" if report.estimated else "measured"
        ax.set_title(
            title
            or f"one training step, batch {report.batch}, input "
            f"{'x'.join(map(str, report.input_shape))} ({kind})",
            pad=16,
        )
        ax.legend(loc="upper right", fontsize=7, ncol=2, framealpha=0.9)
    return Path(path)
