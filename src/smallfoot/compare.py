"""``compare``: train the same dataset/model with several methods and tabulate what each costs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from smallfoot._io import atomic_write_json
from smallfoot.config import RunConfig, apply_overrides
from smallfoot.errors import SmallfootError
from smallfoot.methods import list_methods
from smallfoot.train import run_training


def compare_methods(
    base: RunConfig, methods: list[str] | None = None, out_dir: str | Path = "runs/compare"
) -> list[dict[str, Any]]:
    """Run ``base`` once per method (default: every registered method) and return one row each.

    Each row holds the method, test accuracy, seconds, peak and saved-activation bytes (from
    the meter) and their ratios to the baseline; a method that cannot run this configuration
    gets a row with its ``error`` instead of figures.
    """
    names = methods or [cls.name for cls in list_methods()]
    if "baseline" in names:
        names = ["baseline"] + [n for n in names if n != "baseline"]
    rows = []
    for name in names:
        config = apply_overrides(base, {"method": name, "out_dir": str(out_dir), "run_name": None})
        config = dataclasses.replace(
            config, method_options={} if name != base.method else base.method_options
        )
        try:
            summary = run_training(config)
        except SmallfootError as exc:
            rows.append({"method": name, "error": str(exc)})
            continue
        memory = summary.get("memory") or {}
        rows.append(
            {
                "method": name,
                "test_accuracy": summary["test_accuracy"],
                "seconds": summary["seconds"],
                "parameters": summary["parameters"],
                "peak": memory.get("peak"),
                "saved_activations": memory.get("saved_activations"),
                "run_dir": summary["run_dir"],
            }
        )
    reference = next((r for r in rows if r["method"] == "baseline" and "error" not in r), None)
    if reference:
        for row in rows:
            if "error" in row:
                continue
            for key in ("peak", "saved_activations", "seconds"):
                if row.get(key) is not None and reference.get(key):
                    row[f"{key}_ratio"] = row[key] / reference[key]
    atomic_write_json(Path(out_dir) / "compare.json", rows)
    return rows


def plot_comparison(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Scatter of peak memory (MiB) against test accuracy (%), one labelled point per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for row in rows:
        if "error" in row or row.get("peak") is None:
            continue
        x, y = row["peak"] / 2**20, 100 * row["test_accuracy"]
        ax.scatter(x, y)
        ax.annotate(row["method"], (x, y), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("peak memory of one training step (MiB, smallfoot.memory)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
