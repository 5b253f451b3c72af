"""``compare``: train the same dataset/model with several methods and tabulate what each costs.

Every method gets a row: a method that cannot run the user's configuration as given is
adapted through its :meth:`~smallfoot.methods.Method.adapt` hook (another model, padding, a
minimum of epochs) and its row lists each adaptation, so the table says what actually
trained. ``compare.json`` is rewritten (atomically) after every method, so an interrupted
comparison keeps the rows it finished.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smallfoot._figures import figure
from smallfoot._io import atomic_write_json
from smallfoot.config import RunConfig, apply_overrides
from smallfoot.data import load_dataset
from smallfoot.errors import SmallfootError, TrainingInterrupted
from smallfoot.methods import get_method, get_method_class, list_methods, option_fields
from smallfoot.runner.run import run_training

RATIO_KEYS = ("peak", "saved_activations", "seconds")


def method_config(
    base: RunConfig, name: str, input_shape: tuple[int, ...]
) -> tuple[RunConfig, list[str]]:
    """``(config, notes)``: ``base`` for method ``name`` with those of the base's method options
    that this method takes, adapted by the method so it can run, with one note per change."""
    cls = get_method_class(name)
    own = {field_name for field_name, *_ in option_fields(cls.Options)}
    options = {
        key: value
        for key, value in base.method_options.items()
        if key.replace("-", "_") in own or key.replace("-", "_") + "_" in own
    }
    config = apply_overrides(base, {"method": name, "run_name": None})
    config = dataclasses.replace(config, method_options=options)
    # the method as configured adapts (a reversible variant names its own model)
    return get_method(name, options).adapt(config, input_shape)


def base_input_shape(base: RunConfig) -> tuple[int, ...]:
    """The input shape of one sample of the base configuration's dataset (its data options)."""
    sample = load_dataset(
        base.dataset, "test", base.data_root, limit=1, seed=base.seed, **base.data_options
    )
    return tuple(sample.input_shape)


def warm_up(base: RunConfig) -> None:
    """One untimed two-batch run of the base configuration, so that the first timed method is
    not charged for one-off start-up costs (lazy imports, first kernel launches, allocator)."""
    with tempfile.TemporaryDirectory() as tmp:
        config = apply_overrides(
            base,
            {
                "method": "baseline",
                "method_options": {},
                "epochs": 1,
                "train_limit": 2 * base.batch_size,
                "test_limit": base.batch_size,
                "out_dir": tmp,
                "run_name": "warm-up",
                "progress": False,
                "measure_memory": False,
                "filter": None,
            },
        )
        config = dataclasses.replace(config, method_options={})
        run_training(config)


def compare_methods(
    base: RunConfig,
    methods: list[str] | None = None,
    out_dir: str | Path = "runs/compare",
    *,
    warm: bool = True,
    plans: list[tuple[str, str, dict[str, Any]]] | None = None,
    on_start: Callable[[int, int, str, RunConfig, list[str]], None] | None = None,
    on_row: Callable[[int, int, dict[str, Any], float], None] | None = None,
) -> list[dict[str, Any]]:
    """Run ``base`` once per method (default: every registered method, baseline first) and
    return one row each. ``plans`` instead names each run: ``(label, method, options)``, e.g.
    the candidates of ``smallfoot plan`` (the row keeps the label as ``plan``).

    A row holds the method, the model it actually trained, epochs, parameters, ``adapted``
    (notes on what was changed so the method could run), test accuracy, seconds, peak and
    saved-activation bytes from the meter (``stage``: the stage they were measured in, for
    staged methods) and their ratios to the baseline. A method that still cannot run gets a
    row with its ``error``; any exception is caught that way, except an interruption
    (Ctrl-C), which writes ``compare.json`` with the finished rows and propagates.
    ``on_start(i, n, name, config, notes)`` and ``on_row(i, n, row, seconds_since_start)``
    report progress.
    ``warm`` runs :func:`warm_up` first so time ratios compare steady-state runs.
    """
    if plans is None:
        names = methods or [cls.name for cls in list_methods()]
        if "baseline" in names:
            names = ["baseline"] + [n for n in names if n != "baseline"]
        plans = [(name, name, dict(base.method_options)) for name in names]
    for _, name, _ in plans:
        get_method_class(name)  # unknown names fail before any training
    out_dir = Path(out_dir)
    base = apply_overrides(base, {"out_dir": str(out_dir)})
    input_shape = base_input_shape(base)
    if warm:
        warm_up(base)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for index, (label, name, options) in enumerate(plans):
        planned = dataclasses.replace(base, method_options=options)
        try:
            config, notes = method_config(planned, name, input_shape)
        except SmallfootError as exc:
            config, notes = None, []
            row = {"method": name, "adapted": [], "error": str(exc)}
        else:
            if on_start is not None:
                on_start(index, len(plans), label, config, notes)
            row = _run_row(name, config, notes, rows, out_dir)
        if label != name:
            row["plan"] = label
        rows.append(row)
        _add_ratios(rows)
        atomic_write_json(out_dir / "compare.json", rows)
        if on_row is not None:
            on_row(index, len(plans), row, time.perf_counter() - started)
    return rows


def _run_row(
    name: str, config: RunConfig, notes: list[str], rows: list[dict[str, Any]], out_dir: Path
) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        summary = run_training(config)
    except (KeyboardInterrupt, TrainingInterrupted):
        atomic_write_json(out_dir / "compare.json", rows)
        raise
    except SmallfootError as exc:
        return {"method": name, "adapted": notes, "error": str(exc)}
    except Exception as exc:  # a bug in one method must not lose the other rows
        return {
            "method": name,
            "adapted": notes,
            "error": f"{type(exc).__name__}: {exc} (after {time.perf_counter() - start:.0f} s)",
        }
    memory = summary.get("memory") or {}
    return {
        "method": name,
        "model": summary["model"],
        "epochs": summary["epochs"],
        "adapted": notes,
        "test_accuracy": summary["test_accuracy"],
        "seconds": summary["seconds"],
        "parameters": summary["parameters"],
        "peak": memory.get("peak"),
        "saved_activations": memory.get("saved_activations"),
        "stage": memory.get("stage"),
        "run_dir": summary["run_dir"],
    }


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    reference = next((r for r in rows if r["method"] == "baseline" and "error" not in r), None)
    if reference is None:
        return
    for row in rows:
        if "error" in row:
            continue
        for key in RATIO_KEYS:
            if row.get(key) is not None and reference.get(key):
                row[f"{key}_ratio"] = row[key] / reference[key]


def plot_comparison(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Scatter of peak memory (MiB) against test accuracy (%), one labelled point per method."""
    with figure(path, size=(6, 4)) as (fig, ax):
        for row in rows:
            if "error" in row or row.get("peak") is None:
                continue
            x, y = row["peak"] / 2**20, 100 * row["test_accuracy"]
            ax.scatter(x, y)
            label = row.get("plan", row["method"])
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4))
        ax.set_xlabel("peak memory of one training step (MiB, smallfoot.memory)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    return Path(path)
