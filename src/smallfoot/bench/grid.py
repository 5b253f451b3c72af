"""Benchmarks as grids of runs: each row is a :class:`~smallfoot.config.RunConfig` run
exactly as ``smallfoot train`` runs it (through the method registry), so every figure a
benchmark publishes comes with the command that reproduces it.

A benchmark declares :class:`GridRow` objects (a label, a config, the seeds) and hands them
to :func:`run_grid`, which trains each (row, seed) with :func:`smallfoot.train.run_training`
and returns one record per run: the row's label, the seed, the exact ``smallfoot train ...``
command, and the run's ``summary.json``. Settings the benchmark needs that a user would not
get by default are therefore visible in that command.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smallfoot.config import RunConfig, load_config, train_command
from smallfoot.errors import SmallfootError, TrainingError
from smallfoot.runner import run_training

RUNS_ROOT = Path("runs") / "bench"
"""Where benchmark runs keep their run directories (checkpoints stay out of ``results/``)."""


@dataclass(frozen=True)
class GridRow:
    """One configuration of a benchmark: ``label`` names it in tables, ``config`` is what
    ``smallfoot train`` would run, ``seeds`` the independent runs of it (each overrides
    ``config.seed``); ``extra`` holds fields copied into every record of this row (e.g. the
    depth or slope a table is keyed on)."""

    label: str
    config: RunConfig
    seeds: tuple[int, ...] = (0,)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "row"


REUSE_FINISHED = False
"""Whether :func:`run_grid` keeps a finished run of the same command instead of training it
again (``smallfoot bench NAME --reuse``: a benchmark interrupted or failed after hours of
runs continues where it stopped)."""
REUSED_RUNS = 0
"""How many finished runs :func:`run_grid` kept since the harness last reset it."""


def finished_run(config: RunConfig, directory: Path) -> dict[str, Any] | None:
    """The summary of a finished run of ``config`` in ``directory`` (its ``summary.json``,
    when its ``config.toml`` gives the same ``smallfoot train`` command), else None."""
    if not (directory / "summary.json").exists():
        return None
    try:
        saved = load_config(directory / "config.toml")
    except SmallfootError:
        return None
    if train_command(saved) != train_command(config):
        return None
    return json.loads((directory / "summary.json").read_text())


def run_grid(
    rows: Iterable[GridRow],
    name: str,
    *,
    quick: bool = False,
    runs_root: str | Path = RUNS_ROOT,
    on_run: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train every (row, seed) of ``rows`` as ``smallfoot train`` does and return one record
    per run: ``{"label", "seed", "command", **extra, **summary}`` (the summary's accuracies
    are fractions, seconds wall time, memory in bytes). A run that fails in training (a NaN
    loss) gives ``{"label", "seed", "command", **extra, "error"}`` and the grid goes on.

    Run directories go to ``runs_root/NAME[-quick]/LABEL-sSEED`` and are replaced when they
    exist, so a re-run never resumes a stale run, unless :data:`REUSE_FINISHED` keeps finished
    runs of the same command; the progress bar is off. ``on_run`` is called with each record as
    it completes (for progress output)."""
    global REUSED_RUNS
    parent = Path(runs_root) / (f"{name}-quick" if quick else name)
    records = []
    for row in rows:
        for seed in row.seeds:
            run_name = f"{_slug(row.label)}-s{seed}"
            config = dataclasses.replace(
                row.config, seed=seed, out_dir=str(parent), run_name=run_name, progress=False
            )
            record = {"label": row.label, "seed": seed, "command": train_command(config)}
            record.update(row.extra)
            summary = finished_run(config, parent / run_name) if REUSE_FINISHED else None
            if summary is not None:
                REUSED_RUNS += 1
            else:
                shutil.rmtree(parent / run_name, ignore_errors=True)
                try:
                    summary = run_training(config)
                except TrainingError as error:
                    print(f"{name}: {row.label} seed {seed} failed: {error}", flush=True)
                    summary = {"error": str(error)}
            record.update(summary)
            records.append(record)
            if on_run is not None:
                on_run(record)
    return records


def median_by(
    records: list[dict[str, Any]], key: str, group: Callable[[dict[str, Any]], Any]
) -> dict[Any, float]:
    """The median of ``record[key]`` over the records of each group (``group(record)``);
    records where the value is missing or ``None`` are left out."""
    values: dict[Any, list[float]] = {}
    for record in records:
        value = record.get(key)
        if value is not None:
            values.setdefault(group(record), []).append(value)
    return {name: statistics.median(vs) for name, vs in values.items()}
