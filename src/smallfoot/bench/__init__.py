"""The benchmark harness: named benchmarks that write their figures to ``results/``.

A benchmark is a function ``fn(quick: bool, out_dir: Path) -> BenchResult`` registered with
:func:`register_benchmark`; it saves its plots under ``out_dir`` (``results/NAME/``) and
returns its rows. :func:`run_benchmark` runs it and writes ``results/NAME.json`` (the rows,
notes, machine, torch version, command line, date, duration) and ``results/NAME.md`` (one
table per ``section`` of rows, the notes, the plots). A ``--quick`` run writes
``results/NAME-quick.*`` so it never overwrites the full results. Every module of this
package is imported when benchmarks are listed, so a new ``bench/<name>.py`` registers itself.
"""

from __future__ import annotations

import datetime
import fnmatch
import importlib
import json
import os
import pkgutil
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from smallfoot._io import atomic_write_json, atomic_write_text
from smallfoot.errors import UnknownNameError


@dataclass
class BenchResult:
    """What a benchmark returns: ``rows`` (one dict of figures per measured configuration; a
    ``section`` key splits the markdown into one table per section), the ``figures`` it saved
    (paths under its ``out_dir``) and ``notes`` (setup and caveats, shown under the tables)."""

    rows: list[dict[str, Any]]
    figures: list[Path] = field(default_factory=list)
    notes: str = ""


@dataclass(frozen=True)
class BenchmarkInfo:
    """A registered benchmark."""

    name: str
    description: str
    fn: Callable[[bool, Path], BenchResult]


_REGISTRY: dict[str, BenchmarkInfo] = {}
_loaded = False


def register_benchmark(name: str, description: str):
    """Decorator registering ``fn(quick, out_dir) -> BenchResult`` as benchmark ``name``."""

    def decorate(fn: Callable[[bool, Path], BenchResult]):
        _REGISTRY[name] = BenchmarkInfo(name, description, fn)
        return fn

    return decorate


def _load_all() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{module.name}")


def list_benchmarks(pattern: str = "*") -> list[BenchmarkInfo]:
    """Registered benchmarks whose name matches the glob ``pattern``, sorted by name."""
    _load_all()
    return [info for name, info in sorted(_REGISTRY.items()) if fnmatch.fnmatch(name, pattern)]


def get_benchmark(name: str) -> BenchmarkInfo:
    """The benchmark ``name``; raises ``UnknownNameError`` listing the registered ones."""
    _load_all()
    if name not in _REGISTRY:
        raise UnknownNameError("benchmark", name, sorted(_REGISTRY))
    return _REGISTRY[name]


def machine_info() -> dict[str, Any]:
    """Where the figures were taken: OS, CPU, cores, torch version and threads, GPU if any."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        if len(value) <= 8:
            return ", ".join(_cell(v) for v in value)
        return f"({len(value)} values, see JSON)"
    if isinstance(value, dict):
        return "(see JSON)"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of ``rows``; columns are the union of their keys in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns and k != "section"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(name: str, description: str, result: BenchResult, meta: dict) -> str:
    """The ``results/NAME.md`` page: tables by section, notes, plots, how it was made."""
    sections: dict[Any, list[dict[str, Any]]] = {}
    for row in result.rows:
        sections.setdefault(row.get("section"), []).append(row)
    parts = [f"# Benchmark `{name}`", "", description, ""]
    for section, rows in sections.items():
        if section is not None:
            parts += [f"## {section}", ""]
        parts += [markdown_table(rows), ""]
    if result.notes:
        parts += ["## Notes", "", result.notes, ""]
    if result.figures:
        parts += ["## Plots", ""]
        for path in result.figures:
            rel = Path(path).relative_to(meta["results_dir"]).as_posix()
            parts += [f"![{Path(path).stem}]({rel})", ""]
    machine = meta["machine"]
    parts += [
        "## How these figures were made",
        "",
        f"Command: `{meta['command']}` ({meta['date']}, {meta['seconds']:.0f} s). "
        f"Machine: {machine['platform']}, {machine['cpu_count']} CPU cores "
        f"({machine['torch_threads']} torch threads), torch {machine['torch']}"
        + (f", GPU {machine['cuda']}" if machine["cuda"] else ", no GPU")
        + ". Raw figures: the JSON file of the same name.",
        "",
    ]
    return "\n".join(parts)


def run_benchmark(
    name: str,
    quick: bool = False,
    results_dir: str | os.PathLike = "results",
    command: str | None = None,
) -> dict[str, Any]:
    """Run benchmark ``name`` and write ``results_dir/NAME[-quick].json`` and ``.md``, its
    plots under ``results_dir/NAME[-quick]/``. Returns the JSON document."""
    info = get_benchmark(name)
    results_dir = Path(results_dir)
    stem = f"{name}-quick" if quick else name
    out_dir = results_dir / stem
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = info.fn(quick, out_dir)
    seconds = time.perf_counter() - start
    meta = {
        "benchmark": name,
        "description": info.description,
        "quick": quick,
        "command": command or " ".join(["smallfoot", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "machine": machine_info(),
        "results_dir": results_dir,
    }
    document = {
        **{k: v for k, v in meta.items() if k != "results_dir"},
        "notes": result.notes,
        "figures": [Path(p).relative_to(results_dir).as_posix() for p in result.figures],
        "rows": result.rows,
    }
    atomic_write_json(results_dir / f"{stem}.json", json.loads(json.dumps(document, default=str)))
    atomic_write_text(
        results_dir / f"{stem}.md", render_markdown(name, info.description, result, meta)
    )
    return document
