"""The benchmark harness: named benchmarks that write their figures to ``results/``.

A benchmark is a function ``fn(quick: bool, out_dir: Path) -> BenchResult`` registered with
:func:`register_benchmark`; it saves its plots under ``out_dir`` (``results/NAME/``) and
returns its rows. A function ``claims(rows, command) -> list[Claim]`` registered with
:func:`register_claims` turns those rows into the source paper's claims, each checked against
its target. :func:`run_benchmark` runs the benchmark, computes its claims and writes
``results/NAME.json`` (the claims, rows, notes, machine, torch version, command line, date,
duration) and ``results/NAME.md`` (the claims table, one table per ``section`` of rows, the
notes, the plots); :func:`recompute_claims` redoes only the claims of a committed result. A
``--quick`` run writes ``results/NAME-quick.*`` so it never overwrites the full results.

The benchmarks themselves are the checkout's ``benchmarks/`` modules (:func:`benchmarks_dir`),
not part of the installed package; every module there is imported when benchmarks are listed,
so a new ``benchmarks/<name>.py`` registers itself.
"""

from __future__ import annotations

import dataclasses
import datetime
import fnmatch
import importlib
import json
import math
import operator
import os
import pkgutil
import platform
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from smallfoot._io import atomic_write_json, atomic_write_text
from smallfoot.errors import ConfigError, UnknownNameError

COMPARISONS: dict[str, Callable[[float, Any], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
    "within": lambda value, bounds: bounds[0] <= value <= bounds[1],
}
"""How a claim compares its measured figure with its target (``within``: target = [low, high])."""

_CLAIM_ID = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Claim:
    """One claim of a benchmark's source paper, checked on the benchmark's rows.

    ``id``: ``area.name`` (e.g. ``facto.cut_at_1pt``); ``claim``: one sentence, naming where our
    protocol differs from the paper's; ``paper``: the paper's figure or table and what it says;
    ``measured``: our figure, in ``unit``; ``comparison`` and ``target``: what the claim requires
    of it (``measured <comparison> target``); ``seeds``: independent runs behind ``measured``;
    ``command``: the command that produced the rows. ``met`` is computed, never given."""

    id: str
    claim: str
    paper: str
    measured: float
    comparison: str
    target: float | tuple[float, float]
    seeds: int
    command: str
    unit: str = ""
    met: bool = field(init=False)

    def __post_init__(self):
        if not _CLAIM_ID.match(self.id):
            raise ValueError(f"claim id {self.id!r} is not of the form area.name (a-z, 0-9, _)")
        for name in ("claim", "paper", "command"):
            text = getattr(self, name)
            if not isinstance(text, str) or not text.strip() or "\n" in text:
                raise ValueError(f"claim {self.id}: {name} must be one non-empty line")
        if self.comparison not in COMPARISONS:
            raise ValueError(f"claim {self.id}: comparison must be one of {list(COMPARISONS)}")
        numbers = [self.measured]
        if self.comparison == "within":
            if not (isinstance(self.target, (list, tuple)) and len(self.target) == 2):
                raise ValueError(f"claim {self.id}: 'within' needs target [low, high]")
            object.__setattr__(self, "target", tuple(self.target))
            numbers += list(self.target)
        else:
            numbers.append(self.target)
        for value in numbers:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"claim {self.id}: measured and target must be numbers")
            if not math.isfinite(value):
                raise ValueError(f"claim {self.id}: measured and target must be finite")
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise ValueError(f"claim {self.id}: seeds must be a positive integer")
        met = COMPARISONS[self.comparison](self.measured, self.target)
        object.__setattr__(self, "met", bool(met))

    def to_dict(self) -> dict[str, Any]:
        """The claim as the JSON object stored in ``results/NAME.json``'s ``claims`` list."""
        target = list(self.target) if isinstance(self.target, tuple) else self.target
        return {
            "id": self.id,
            "claim": self.claim,
            "paper": self.paper,
            "measured": self.measured,
            "unit": self.unit,
            "comparison": self.comparison,
            "target": target,
            "met": self.met,
            "seeds": self.seeds,
            "command": self.command,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Claim:
        """The claim stored as ``data``; raises ``ValueError`` when a field is missing or wrong,
        or when its stored ``met`` is not what its measured figure and target give."""
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        missing = [name for name in names if name not in data and name != "unit"]
        if missing:
            raise ValueError(f"claim {data.get('id')!r} lacks {', '.join(missing)}")
        claim = cls(**{name: data[name] for name in names if name in data})
        if data.get("met") is not claim.met:
            raise ValueError(f"claim {claim.id}: stored met={data.get('met')} but "
                             f"{claim.measured} {claim.comparison} {claim.target} is {claim.met}")  # fmt: skip
        return claim

    def display(self) -> dict[str, str]:
        """The claim as table cells: id, claim, paper, measured and target with their unit
        (``3.04 points``, ``<= 1 points``, ``within 76-84 %``), met (yes / no)."""
        if self.comparison == "within":
            target = f"within {_cell(self.target[0])}-{_cell(self.target[1])}"
        else:
            target = f"{self.comparison} {_cell(self.target)}"
        return {
            "id": self.id,
            "claim": self.claim,
            "paper": self.paper,
            "measured": f"{_cell(self.measured)} {self.unit}".strip(),
            "target": f"{target} {self.unit}".strip(),
            "met": _cell(self.met),
        }


@dataclass
class BenchResult:
    """What a benchmark returns: ``rows`` (one dict of figures per measured configuration; a
    ``section`` key splits the markdown into one table per section), the ``figures`` it saved
    (paths under its ``out_dir``) and ``notes`` (setup and caveats, shown under the tables).
    ``claims`` are computed from the rows by the benchmark's registered claims function."""

    rows: list[dict[str, Any]]
    figures: list[Path] = field(default_factory=list)
    notes: str = ""
    claims: list[Claim] = field(default_factory=list)


@dataclass(frozen=True)
class BenchmarkInfo:
    """A registered benchmark."""

    name: str
    description: str
    fn: Callable[[bool, Path], BenchResult]


_REGISTRY: dict[str, BenchmarkInfo] = {}
_CLAIMS: dict[str, Callable[[list[dict[str, Any]], str], list[Claim]]] = {}
_loaded = False


def register_benchmark(name: str, description: str):
    """Decorator registering ``fn(quick, out_dir) -> BenchResult`` as benchmark ``name``."""

    def decorate(fn: Callable[[bool, Path], BenchResult]):
        _REGISTRY[name] = BenchmarkInfo(name, description, fn)
        return fn

    return decorate


def register_claims(name: str):
    """Decorator registering ``fn(rows, command) -> list[Claim]`` as the claims of benchmark
    ``name``: the paper's claims computed from the benchmark's rows (a claim whose figures the
    rows lack is left out)."""

    def decorate(fn: Callable[[list[dict[str, Any]], str], list[Claim]]):
        _CLAIMS[name] = fn
        return fn

    return decorate


def compute_claims(name: str, rows: list[dict[str, Any]], command: str) -> list[Claim]:
    """The claims of benchmark ``name`` computed from ``rows`` (none if it registered no claims
    function); ``command`` is the command that produced the rows."""
    get_benchmark(name)
    fn = _CLAIMS.get(name)
    claims = fn(rows, command) if fn else []
    ids = [claim.id for claim in claims]
    if len(set(ids)) != len(ids):
        raise ValueError(f"benchmark {name}: duplicate claim ids in {ids}")
    return claims


BENCHMARKS_ENV = "SMALLFOOT_BENCHMARKS"
"""Environment variable naming the benchmarks directory (default: ``./benchmarks``, else the
``benchmarks/`` of the checkout the package is installed from in editable mode)."""


def benchmarks_dir() -> Path:
    """The directory of the project's benchmark modules; ``ConfigError`` when there is none
    (the benchmarks ship with the checkout, not with the installed package)."""
    candidates = [Path(os.environ[BENCHMARKS_ENV])] if os.environ.get(BENCHMARKS_ENV) else [
        Path.cwd() / "benchmarks", Path(__file__).resolve().parents[3] / "benchmarks"
    ]  # fmt: skip
    for candidate in candidates:
        if (candidate / "__init__.py").is_file():
            return candidate.resolve()
    raise ConfigError(
        "no benchmarks/ directory here: the benchmarks live in the smallfoot checkout; run "
        f"`smallfoot bench` from it or set {BENCHMARKS_ENV}=/path/to/smallfoot/benchmarks"
    )


def _load_all() -> None:
    global _loaded
    if not _loaded:
        directory = benchmarks_dir()
        if str(directory.parent) not in sys.path:
            sys.path.insert(0, str(directory.parent))
        package = importlib.import_module("benchmarks")
        if Path(package.__file__).resolve().parent != directory:
            raise ConfigError(
                f"another module named 'benchmarks' ({package.__file__}) hides {directory}; "
                "rename or remove it"
            )
        for module in pkgutil.iter_modules([str(directory)]):
            importlib.import_module(f"benchmarks.{module.name}")
        _loaded = True


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


def _load_average() -> list[float] | None:
    """The system's 1-, 5- and 15-minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _load_text(load: dict[str, Any] | None) -> str:
    if not load or not load.get("before") or not load.get("after"):
        return ""
    return (
        f"; load average (1/5/15 min) {'/'.join(map(str, load['before']))} before, "
        f"{'/'.join(map(str, load['after']))} after"
    )


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


def claims_table(claims: list[Claim]) -> str:
    """A markdown table of ``claims``: id, claim, paper, measured, target, met."""
    return markdown_table([{**claim.display(), "seeds": claim.seeds} for claim in claims])


def render_markdown(name: str, description: str, result: BenchResult, meta: dict) -> str:
    """The ``results/NAME.md`` page: claims, tables by section, notes, plots, how it was made."""
    sections: dict[Any, list[dict[str, Any]]] = {}
    for row in result.rows:
        sections.setdefault(row.get("section"), []).append(row)
    parts = [f"# Benchmark `{name}`", "", description, ""]
    met = sum(claim.met for claim in result.claims)
    parts += ["## Claims", ""]
    if result.claims:
        parts += [
            f"{met} of {len(result.claims)} claims of the source met "
            f"(computed from the rows below; `smallfoot claims` lists every benchmark's).",
            "",
            claims_table(result.claims),
            "",
        ]
    else:
        parts += ["None: these rows hold no figure that a claim of the source is about.", ""]
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
        + _load_text(meta.get("load_average"))
        + (
            f". {meta['reused_runs']} training runs were kept from an earlier invocation "
            "(`--reuse`); the seconds above exclude them, each run's own are in its row"
            if meta.get("reused_runs")
            else ""
        )
        + ". Raw figures: the JSON file of the same name.",
        "",
    ]
    return "\n".join(parts)


def run_benchmark(
    name: str,
    quick: bool = False,
    results_dir: str | os.PathLike = "results",
    command: str | None = None,
    reuse: bool = False,
) -> dict[str, Any]:
    """Run benchmark ``name`` and write ``results_dir/NAME[-quick].json`` and ``.md``, its
    plots under ``results_dir/NAME[-quick]/``. Returns the JSON document. ``reuse`` keeps the
    grid's finished runs of the same command (``grid.REUSE_FINISHED``)."""
    from smallfoot.bench import grid

    info = get_benchmark(name)
    results_dir = Path(results_dir)
    stem = f"{name}-quick" if quick else name
    out_dir = results_dir / stem
    out_dir.mkdir(parents=True, exist_ok=True)
    load_before = _load_average()
    start = time.perf_counter()
    grid.REUSE_FINISHED, grid.REUSED_RUNS = reuse, 0
    try:
        result = info.fn(quick, out_dir)
    finally:
        grid.REUSE_FINISHED = False
    seconds = time.perf_counter() - start
    command = command or " ".join(["smallfoot", *sys.argv[1:]])
    rows = json.loads(json.dumps(result.rows, default=str))
    result = dataclasses.replace(result, rows=rows)
    result.claims = compute_claims(name, rows, claims_command(name, quick, command))
    document = {
        "benchmark": name,
        "description": info.description,
        "quick": quick,
        "command": command,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "machine": machine_info(),
        # 1-, 5- and 15-minute load averages: another job on the machine inflates every timing
        "load_average": {"before": load_before, "after": _load_average()},
        **({"reused_runs": grid.REUSED_RUNS} if grid.REUSED_RUNS else {}),
        "claims": [claim.to_dict() for claim in result.claims],
        "notes": result.notes,
        "figures": [Path(p).relative_to(results_dir).as_posix() for p in result.figures],
        "rows": rows,
    }
    _write_results(results_dir, stem, document, result)
    return document


def claims_command(name: str, quick: bool, command: str) -> str:
    """The command a claim names as the one that produced its rows: ``command`` when it is a
    ``smallfoot bench`` command line, otherwise (rows made from Python, e.g. ``python -c
    "...run_benchmark('facto')"``) the ``smallfoot bench NAME [--quick]`` that does the same."""
    if command.startswith("smallfoot bench "):
        return command
    return f"smallfoot bench {name}" + (" --quick" if quick else "")


def _write_results(results_dir: Path, stem: str, document: dict, result: BenchResult) -> None:
    meta = {**document, "results_dir": results_dir}
    markdown = render_markdown(document["benchmark"], document["description"], result, meta)
    atomic_write_json(results_dir / f"{stem}.json", json.loads(json.dumps(document, default=str)))
    atomic_write_text(results_dir / f"{stem}.md", markdown)


def recompute_claims(
    name: str, quick: bool = False, results_dir: str | os.PathLike = "results"
) -> dict[str, Any]:
    """Recompute the claims of the committed ``results_dir/NAME[-quick].json`` from its rows
    (no training) and rewrite its ``claims`` and the ``.md`` page (each file written atomically;
    rows, notes and plots unchanged). Returns the updated JSON document."""
    get_benchmark(name)
    results_dir = Path(results_dir)
    stem = f"{name}-quick" if quick else name
    path = results_dir / f"{stem}.json"
    if not path.exists():
        raise ConfigError(f"{path} does not exist: run `smallfoot bench {name}` first")
    try:
        document = json.loads(path.read_text())
        rows, command = document["rows"], document["command"]
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"{path} is not a benchmark result ({exc}): re-run "
                          f"`smallfoot bench {name}`") from exc  # fmt: skip
    claims = compute_claims(name, rows, claims_command(name, quick, command))
    # A result written before claims existed gets them where run_benchmark puts them.
    updated = {}
    for key, value in document.items():
        if key == "notes" and "claims" not in document:
            updated["claims"] = None
        updated[key] = value
    updated["claims"] = [claim.to_dict() for claim in claims]
    figures = [results_dir / figure for figure in document.get("figures", [])]
    result = BenchResult(rows, figures, document.get("notes", ""), claims)
    _write_results(results_dir, stem, updated, result)
    return updated
