"""The planner: which configurations of smallfoot's methods train a model in a memory budget,
and what each costs.

:func:`plan` enumerates candidates (baseline, gradient accumulation over micro-batches,
activation checkpointing every k top-level layers, the reversible twins, a Facto grid,
layer-wise unit sizes, offloading on a GPU), estimates one training step of each with the meter
on fake tensors (nothing is allocated), times a few real steps of each that fits at a small
batch, attaches the accuracy evidence of the committed benchmark claims, and ranks the ones
that fit by expected time overhead. Every candidate is a registered method with its options,
so ``smallfoot train --method M --option ...`` runs it as planned.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import re
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from smallfoot.config import RunConfig
from smallfoot.errors import ConfigError, ShapeError, SmallfootError

_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}

FACTO_GRID = {"inr": (0.2, 0.3, 0.5), "kernel": (2,), "apply_ratio": (0.6, 1.0)}
"""The Facto settings the planner tries (every combination)."""

LAYERWISE_UNITS = (1, 2, 4)
"""The layer-wise unit sizes (top-level layers per unit) the planner tries."""

REVERSIBLE_VARIANTS = ("revnet", "irevnet", "hybrid", "layerwise")
"""The reversible twins the planner tries for image inputs."""

TIMING_BATCH = 2
"""Batch size of the timed real steps (scaled linearly to the planned batch)."""

TIMING_STEPS = 2
"""Timed real steps per candidate (after one untimed warm-up step); the fastest counts."""

TIE_MARGIN = 0.1
"""Time overheads are ranked to the nearest this fraction; ties keep the candidates' order."""

TIMING_NOTE = (
    f"time per step: the fastest of {TIMING_STEPS} real steps (after one warm-up) at batch "
    f"{TIMING_BATCH}, image sides halved while above 128 px, scaled linearly in samples and "
    f"pixels (the baseline timed again after any candidate timed, the fastest counting); "
    f"overhead = candidate / baseline - 1, ranked to the nearest {TIE_MARGIN:.0%}, a "
    "negative one as none (ties: baseline, micro-batches, checkpointing, reversible, Facto, "
    "layer-wise). Micro-batches take the baseline's time per sample (the linear model ignores "
    "what smaller batches lose in efficiency); staged methods are not timed"
)
"""How :func:`plan` estimates time, as shown with every plan."""

# what the committed benchmark claims say about each method's accuracy (claim ids)
EVIDENCE_CLAIMS = {
    "facto": ("facto.cut_at_1pt",),
    "layerwise": ("layerwise.gap",),
    "reversible": ("reversible.exact_gradients", "reversible.hybrid_time"),
}

# methods whose gradients are those of plain backprop by construction: (summary, why)
EXACT_BY_CONSTRUCTION = {
    "baseline": ("reference", "plain backpropagation: the reference"),
    "checkpoint": (
        "exact gradients",
        "recomputes the same forward (same RNG state, batch-norm statistics kept): the "
        "gradients of plain backpropagation",
    ),
    "offload": (
        "exact gradients",
        "saved tensors copied out and back unchanged: the gradients of plain backpropagation",
    ),
    "accumulate": (
        "exact; BN per micro-batch",
        "the full batch's gradient of a batch-mean loss; batch-norm statistics are those of "
        "each micro-batch",
    ),
}


def parse_bytes(text: str | int) -> int:
    """``"4GiB"``, ``"500 MB"``, ``"1e9"`` or an integer -> bytes (int); raises ``ConfigError``."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", str(text))
        unit = match.group(2).lower() if match else ""
        if not match or unit not in _UNITS and unit != "":
            raise ConfigError(
                f"cannot read the budget {text!r}; give a number with a unit, e.g. 4GiB, 500MB"
            )
        try:
            value = int(float(match.group(1)) * _UNITS[unit or "b"])
        except ValueError:
            raise ConfigError(f"cannot read the budget {text!r}; e.g. 4GiB, 500MB") from None
    if value <= 0:
        raise ConfigError(f"the budget must be positive, got {text!r}; e.g. --budget 4GiB")
    return value


def format_bytes(n: int | None) -> str:
    """Bytes as ``"1.42 GiB"`` / ``"512.0 MiB"`` (``"-"`` for None)."""
    if n is None:
        return "-"
    if abs(n) >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.1f} MiB"


@dataclass(frozen=True, eq=False)
class Spec:
    """One configuration to try: a registered method (``a+b`` for a composition) and its
    options, as ``smallfoot train --method`` takes them."""

    name: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        """The methods it combines."""
        return self.method.split("+")


@dataclass
class Candidate:
    """A planned configuration: ``estimated_peak`` in bytes (None when refused), ``fits``
    the budget, ``time_overhead`` (seconds per step / baseline's - 1; None when not timed),
    ``seconds_per_step`` at the planned batch, ``accuracy_evidence`` (what the committed
    claims measured, with their dataset), ``reason`` (why it fits or not)."""

    name: str
    methods: list[str]
    options: dict[str, Any]
    estimated_peak: int | None
    fits: bool
    time_overhead: float | None
    accuracy_evidence: list[dict[str, Any]]
    reason: str
    seconds_per_step: float | None = None
    stage: str | None = None

    @property
    def method(self) -> str:
        """The ``--method`` value that runs it."""
        return "+".join(self.methods)

    def command_flags(self) -> str:
        """``--method M --opt value ...`` for ``smallfoot train``/``memory``."""
        flags = [f"--method {self.method}"]
        flags += [f"--{k.replace('_', '-')} {_flag_value(v)}" for k, v in self.options.items()]
        return " ".join(flags)

    def to_dict(self) -> dict[str, Any]:
        """The candidate as ``smallfoot plan --json`` prints it (bytes as integers)."""
        return {
            "name": self.name,
            "methods": list(self.methods),
            "options": dict(self.options),
            "estimated_peak": self.estimated_peak,
            "fits": self.fits,
            "time_overhead": self.time_overhead,
            "accuracy_evidence": list(self.accuracy_evidence),
            "reason": self.reason,
        }


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


@dataclass
class Plan:
    """The planner's answer: ``candidates`` ranked (those that fit first, by time overhead,
    then the others by estimated peak), ``budget`` and ``baseline_peak`` in bytes."""

    model: str
    input_shape: tuple[int, ...]
    batch: int
    budget: int
    baseline_peak: int | None
    candidates: list[Candidate]
    seconds: float = 0.0
    timing: str = TIMING_NOTE

    @property
    def chosen(self) -> Candidate | None:
        """The best candidate that fits, or None."""
        return next((c for c in self.candidates if c.fits), None)

    def to_dict(self) -> dict[str, Any]:
        """``{"budget", "baseline_peak", "chosen", "candidates"}`` as ``--json`` prints it."""
        chosen = self.chosen
        return {
            "budget": self.budget,
            "baseline_peak": self.baseline_peak,
            "chosen": chosen.to_dict() if chosen is not None else None,
            "candidates": [c.to_dict() for c in self.candidates],
        }


def candidate_specs(
    model: str, input_shape: tuple[int, ...], batch: int, device: str = "cpu"
) -> list[Spec]:
    """Every configuration the planner tries for ``model`` on inputs of ``input_shape``
    (C, H, W) or (D,) at batch ``batch``: baseline; accumulation over 2, 4, ... micro-batches
    (down to micro-batches of 1); checkpointing with every segment count that k top-level
    layers per segment gives, selective checkpointing with every top-level layer a segment,
    and micro-batches of the model checkpointed layer by layer
    (``accumulate+checkpoint``); reversible twins (image inputs); :data:`FACTO_GRID`; Facto's
    paper point inside the revnet twin and inside layer-by-layer checkpointing;
    :data:`LAYERWISE_UNITS`; offloading on a GPU."""
    specs = [Spec("baseline", "baseline")]
    parts = 2
    while parts <= batch:
        micro = -(-batch // parts)
        specs.append(
            Spec(f"{parts} micro-batches of {micro}", "accumulate", {"micro_batches": parts})
        )
        if micro == 1:
            break
        parts *= 2
    layers = _top_level_layers(model, input_shape)
    if layers:
        segments = sorted({math.ceil(layers / k) for k in range(1, layers)} - {1}, reverse=True)
        for s in segments:
            every = math.ceil(layers / s)
            specs.append(
                Spec(
                    f"checkpoint, {s} segments (~{every} layers each)",
                    "checkpoint",
                    {"segments": s},
                )
            )
        # PyTorch's selective checkpointing, every top-level layer a segment: the last plain
        # segment is the smallest; a segment of several layers (a ResNet stage) keeps only its
        # convolutions' and matrix products' results besides its input
        specs.append(
            Spec(
                f"selective checkpoint, {layers} segments",
                "checkpoint",
                {"segments": layers, "policy": "selective"},
            )
        )
        # micro-batches of a checkpointed model, for budgets neither reaches alone
        parts = 2
        while parts <= batch:
            micro = -(-batch // parts)
            specs.append(
                Spec(
                    f"{parts} micro-batches of {micro} + checkpoint, {layers} segments",
                    "accumulate+checkpoint",
                    {"micro_batches": parts, "segments": layers},
                )
            )
            if micro == 1:
                break
            parts *= 2
    else:
        specs.append(Spec("checkpoint", "checkpoint"))
    if len(input_shape) == 3:
        for variant in REVERSIBLE_VARIANTS:
            specs.append(Spec(f"reversible {variant}", "reversible", {"variant": variant}))
    for inr in FACTO_GRID["inr"]:
        for kernel in FACTO_GRID["kernel"]:
            for ratio in FACTO_GRID["apply_ratio"]:
                options = {"inr": inr, "kernel": kernel, "apply_ratio": ratio}
                specs.append(Spec(f"facto INR {inr}, k {kernel}, ratio {ratio}", "facto", options))
    # Facto's paper point inside the reversible twin's blocks and inside checkpointed segments
    # (each composition saves at most what the smaller of its parts saves: tests/facto)
    paper = {"inr": 0.3, "kernel": 2, "apply_ratio": 0.6}
    if len(input_shape) == 3:
        options = {**paper, "variant": "revnet"}
        specs.append(Spec("facto + reversible revnet", "facto+reversible", options))
    if layers:
        options = {**paper, "segments": layers}
        specs.append(Spec(f"facto + checkpoint, {layers} segments", "facto+checkpoint", options))
    for unit in LAYERWISE_UNITS:
        if layers is None or unit < layers:
            specs.append(Spec(f"layerwise, units of {unit}", "layerwise", {"unit_size": unit}))
    if str(device).startswith("cuda"):
        specs.append(Spec("offload", "offload"))
    return specs


def _top_level_layers(model: str, input_shape: tuple[int, ...]) -> int | None:
    """Number of top-level layers of ``model`` when it is an ``nn.Sequential`` (else None);
    built on the meta device, so nothing is allocated."""
    from torch import nn

    from smallfoot.models import build_model

    with torch.device("meta"):
        net = build_model(model, input_shape, 10)
    return len(net) if isinstance(net, nn.Sequential) else None


@functools.cache
def source_digest() -> str:
    """SHA-256 of every module of the installed smallfoot package: a cached estimate is reused
    only by the code that made it (the version number does not change with every fix)."""
    digest = hashlib.sha256()
    package = Path(__file__).parent
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


class EstimateCache:
    """Estimates and timings by key, kept in a JSON file (None: in memory only) that holds
    only the entries of the code that wrote it: ``{"source", "torch", "entries"}``, where
    ``source`` is :func:`source_digest` and ``torch`` torch's version; a file written by other
    code (or another torch) is started afresh, so it never grows stale entries."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path is not None else None
        self.entries: dict[str, Any] = {}
        self.changed = False
        if self.path is not None and self.path.exists():
            try:
                saved = json.loads(self.path.read_text())
            except (OSError, ValueError):
                saved = {}
            if (
                isinstance(saved, dict)
                and saved.get("source") == source_digest()
                and (saved.get("torch") == torch.__version__)
            ):
                self.entries = saved.get("entries", {})

    @staticmethod
    def key(*parts: Any) -> str:
        """A key for ``parts`` (any JSON-ready values)."""
        text = json.dumps(list(parts), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def fetch(self, key: str, compute: Callable[[], Any]) -> Any:
        """The value cached under ``key``; when there is none, ``compute()``'s, cached."""
        if key not in self.entries:
            self.entries[key] = compute()
            self.changed = True
        return self.entries[key]

    def put(self, key: str, value: Any) -> None:
        """Cache ``value`` under ``key`` (replacing what was there)."""
        self.entries[key] = value
        self.changed = True

    def save(self) -> None:
        """Write the file (atomically) when something was added."""
        if self.path is not None and self.changed:
            from smallfoot._io import atomic_write_json

            # a cache that cannot be written only costs the next plan its time
            with contextlib.suppress(OSError):
                atomic_write_json(
                    self.path,
                    {
                        "source": source_digest(),
                        "torch": torch.__version__,
                        "entries": self.entries,
                    },
                )


def default_cache_path() -> Path:
    """``$SMALLFOOT_CACHE/plan.json`` (default ``~/.cache/smallfoot/plan.json``)."""
    root = os.environ.get("SMALLFOOT_CACHE") or Path.home() / ".cache" / "smallfoot"
    return Path(root) / "plan.json"


def _context(
    spec: Spec,
    model: str,
    input_shape,
    batch: int,
    classes: int,
    optimizer: str,
    device,
    streamed: bool = False,
):
    """``(method instance, RunContext)`` of ``spec`` on a 1-sample synthetic set (a stream
    with ``streamed``)."""
    from smallfoot.config import RunConfig
    from smallfoot.methods import RunContext, get_method
    from smallfoot.runner.step import synthetic_sample

    config = RunConfig(
        model=model,
        method=spec.method,
        batch_size=batch,
        optimizer=optimizer,
        method_options=dict(spec.options),
    ).validate()
    runner = get_method(spec.method, spec.options)
    sample = synthetic_sample(input_shape, classes, streamed=streamed)
    return runner, RunContext(config, runner.options, sample, sample, device=device)


def estimate_spec(
    spec: Spec,
    model: str,
    input_shape,
    batch: int,
    classes: int = 10,
    optimizer: str = "sgd",
    *,
    full_rank: bool = False,
    streamed: bool = False,
    device: str = "cpu",
) -> dict[str, Any]:
    """``{"peak", "stage", "saved_activations"}`` (bytes) of one training step of ``spec``,
    estimated on fake tensors after the method's ``check_run`` (``full_rank``: a step of a
    Facto spec's full-rank epochs; ``streamed``: the training set is a stream, whose batch is
    read whole into the memory of the CPU, so on ``device`` "cuda" only its micro-batches
    count); ``{"refused": reason}`` when the method refuses the configuration."""
    try:
        runner, ctx = _context(
            spec, model, input_shape, batch, classes, optimizer, device, streamed
        )
        runner.check_run(ctx)
        if full_rank:
            report = runner.full_rank_step_memory(ctx, fake=True)
        else:
            report = runner.step_memory(ctx, fake=True)
    except (SmallfootError, RuntimeError, ValueError, TypeError) as exc:
        return {"refused": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
    return {
        "peak": int(report.peak),
        "stage": report.stage,
        "saved_activations": int(report.saved_activations),
    }


def timing_shape(input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The input shape the timed steps use: image sides halved while above 128 px."""
    if len(input_shape) != 3:
        return tuple(input_shape)
    c, h, w = input_shape
    while h > 128 and w > 128 and h % 2 == 0 and w % 2 == 0:
        h, w = h // 2, w // 2
    return (c, h, w)


def time_spec(
    spec: Spec,
    model: str,
    input_shape,
    batch: int,
    classes: int = 10,
    optimizer: str = "sgd",
    device: str = "cpu",
) -> float:
    """Seconds per training step of ``spec`` at batch ``batch`` on ``input_shape``: the
    fastest of :data:`TIMING_STEPS` real steps of its :meth:`metered_step` (after one warm-up)
    at batch :data:`TIMING_BATCH` on :func:`timing_shape`, scaled linearly in samples and
    pixels (see :data:`TIMING_NOTE`)."""
    small = timing_shape(input_shape)
    b = min(TIMING_BATCH, batch)
    runner, ctx = _context(spec, model, small, b, classes, optimizer, device)
    torch.manual_seed(0)
    net, loss_fn, opt = runner.metered_step(ctx)
    net = net.to(device).train()
    x = torch.randn(b, *small, device=device)
    y = torch.randint(classes, (b,), device=device)
    best = math.inf
    for step in range(TIMING_STEPS + 1):
        _sync(device)
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()
        _sync(device)
        if step:
            best = min(best, time.perf_counter() - start)
    scale = (batch / b) * (math.prod(input_shape) / math.prod(small))
    return best * scale


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def accuracy_evidence(methods: list[str], results_dir: str | os.PathLike = "results") -> list[dict]:
    """What is known of the accuracy of ``methods``: for each, the committed benchmark claims
    about it (id, measured figure with unit, target, met, the datasets its sentence names, the
    sentence) or, for methods exact by construction, why; empty when nothing is known."""
    return _evidence(methods, _known_claims(results_dir))


def _known_claims(results_dir: str | os.PathLike) -> dict[str, Any]:
    from smallfoot.claims import collect_claims

    try:
        return {item.claim.id: item.claim for item in collect_claims(results_dir)}
    except ConfigError:
        return {}


def _evidence(methods: list[str], claims: dict[str, Any]) -> list[dict]:
    from smallfoot.data import list_datasets

    datasets = [info.name for info in list_datasets()]
    evidence: list[dict] = []
    for method in methods:
        if method in EXACT_BY_CONSTRUCTION:
            summary, why = EXACT_BY_CONSTRUCTION[method]
            evidence.append({"method": method, "summary": summary, "construction": why})
        for claim_id in EVIDENCE_CLAIMS.get(method, ()):
            claim = claims.get(claim_id)
            if claim is None:
                continue
            text = claim.claim.lower()
            target = list(claim.target) if isinstance(claim.target, tuple) else claim.target
            evidence.append(
                {
                    "method": method,
                    "claim": claim.id,
                    "measured": claim.measured,
                    "unit": claim.unit,
                    "comparison": claim.comparison,
                    "target": target,
                    "met": claim.met,
                    "datasets": [d for d in datasets if _names(d, text)],
                    "claim_text": claim.claim,
                }
            )
    return evidence


def _names(dataset: str, text: str) -> bool:
    """Whether ``text`` (lower case) names ``dataset`` as a whole word (mnist is not named by
    fashion-mnist)."""
    return re.search(rf"(?<![\w-]){re.escape(dataset.lower())}(?![\w-])", text) is not None


def plan(
    model: str,
    example_input: torch.Tensor | tuple[int, ...],
    budget: int | str,
    *,
    classes: int = 10,
    optimizer: str = "sgd",
    device: str = "cpu",
    specs: list[Spec] | None = None,
    timed: bool = True,
    cache: str | os.PathLike | None = None,
    results_dir: str | os.PathLike = "results",
    progress: Callable[[str], None] | None = None,
    streamed: bool = False,
) -> Plan:
    """Plan how to train ``model`` (a registered model name) on batches like
    ``example_input`` ((B, C, H, W) or (B, D): a tensor or its shape; B is the batch size) in
    ``budget`` bytes (an int or ``"4GiB"``); ``streamed``: the training set is a stream (read
    in order, each batch whole: methods that need random access refuse it).

    Every spec (default :func:`candidate_specs`) is estimated on fake tensors; those that fit
    and the baseline are timed (``timed``; see :data:`TIMING_NOTE`) on ``device``. ``cache``:
    a JSON file keeping estimates and timings by (model, input, batch, classes, optimizer,
    whether the data is a stream, method, options; the device for timings, and for the
    estimates of a stream on a GPU) (None: no file). ``progress(name)`` is called before each
    candidate. Returns the :class:`Plan`, candidates ranked."""
    shape = tuple(example_input.shape if isinstance(example_input, torch.Tensor) else example_input)
    if len(shape) < 2 or any(int(s) < 1 for s in shape):
        raise ShapeError(
            f"example input of shape {shape} must be (B, C, H, W) or (B, D) with positive sizes"
        )
    batch, input_shape = int(shape[0]), tuple(int(s) for s in shape[1:])
    budget = parse_bytes(budget)
    started = time.perf_counter()
    store = EstimateCache(cache)
    base = (model, list(input_shape), batch, classes, optimizer, streamed)
    specs = specs if specs is not None else candidate_specs(model, input_shape, batch, device)
    if not any(s.method == "baseline" for s in specs):
        specs = [Spec("baseline", "baseline"), *specs]
    estimated = functools.partial(
        estimate_spec, model=model, input_shape=input_shape, batch=batch, classes=classes,
        optimizer=optimizer, streamed=streamed, device=device,
    )  # fmt: skip
    estimate_base = base
    if streamed and str(device).startswith("cuda"):  # a stream's batch waits in the CPU's memory
        estimate_base = (*base, "cuda")
    estimates = {}
    fitting_splits: set[str] = set()
    for spec in specs:
        # more micro-batches than the first that fits only cost efficiency, and checkpointing
        # on top of micro-batches is for budgets micro-batches alone cannot reach
        if spec.method in fitting_splits or (
            spec.method.startswith("accumulate+") and "accumulate" in fitting_splits
        ):
            continue
        if progress is not None:
            progress(spec.name)
        found = store.fetch(
            store.key("estimate", *estimate_base, spec.method, spec.options),
            functools.partial(estimated, spec),
        )
        estimates[spec] = found
        if spec.method.startswith("accumulate") and found.get("peak", budget + 1) <= budget:
            fitting_splits.add(spec.method)
    specs = [spec for spec in specs if spec in estimates]
    for spec in specs:
        if "facto" in spec.methods and "peak" in estimates[spec]:
            full_rank = store.fetch(
                store.key("estimate", *estimate_base, spec.method, spec.options, FULL_RANK_STAGE),
                functools.partial(estimated, spec, full_rank=True),
            )
            estimates[spec] = _whole_run(estimates[spec], full_rank)
    baseline_spec = next(s for s in specs if s.method == "baseline")
    baseline = estimates[baseline_spec]
    if "refused" in baseline:
        store.save()
        raise ConfigError(f"cannot estimate {model} at {shape}: {baseline['refused']}")
    times: dict[Spec, float | None] = {}
    if timed:
        timing = functools.partial(
            time_spec, model=model, input_shape=input_shape, batch=batch, classes=classes,
            optimizer=optimizer, device=device,
        )  # fmt: skip
        baseline_key = store.key(
            "time", *base, baseline_spec.method, baseline_spec.options, str(device)
        )
        timed_now = False
        for spec in specs:
            fits = estimates[spec].get("peak", budget + 1) <= budget
            if spec is not baseline_spec and not fits:
                continue
            if spec.method in ("accumulate", "layerwise"):
                continue
            key = store.key("time", *base, spec.method, spec.options, str(device))
            timed_now = timed_now or key not in store.entries
            times[spec] = store.fetch(key, functools.partial(timing, spec))
        if timed_now and len(times) > 1:
            # the baseline is every overhead's reference: when this plan timed anything, it
            # is timed again after the candidates and the fastest of its timings counts (the
            # first real step of a process runs slow)
            times[baseline_spec] = min(times[baseline_spec], timing(baseline_spec))
            store.put(baseline_key, times[baseline_spec])
        if baseline_spec in times:
            for spec in specs:
                if (
                    spec.method == "accumulate"
                    and estimates[spec].get("peak", budget + 1) <= budget
                ):
                    times[spec] = times[baseline_spec]
    store.save()
    base_time = times.get(baseline_spec)
    claims = _known_claims(results_dir)
    candidates = [
        _candidate(spec, estimates[spec], times.get(spec), base_time, budget, claims)
        for spec in specs
    ]
    fit = sorted((c for c in candidates if c.fits), key=rank_key)
    rest = sorted(
        (c for c in candidates if not c.fits),
        key=lambda c: (c.estimated_peak is None, c.estimated_peak or 0),
    )
    return Plan(
        model=model,
        input_shape=input_shape,
        batch=batch,
        budget=budget,
        baseline_peak=baseline["peak"],
        candidates=fit + rest,
        seconds=time.perf_counter() - started,
    )


def rank_key(candidate: Candidate) -> tuple[bool, int]:
    """How fitting candidates are ranked: timed ones first, by time overhead counted to the
    nearest :data:`TIE_MARGIN` (what repeated timings on a loaded machine differ by), a
    negative overhead as none (the planner answers what fits, not what runs faster: a
    lossy method that times faster than the baseline does not displace an exact one);
    ties keep the order of the specs (baseline, micro-batches, checkpointing, ...)."""
    overhead = max(candidate.time_overhead or 0.0, 0.0)
    return candidate.time_overhead is None, round(overhead / TIE_MARGIN)


FULL_RANK_STAGE = "full-rank epochs (before Facto's first rate drop)"


def _whole_run(low_rank: dict[str, Any], full_rank: dict[str, Any]) -> dict[str, Any]:
    """The estimate that bounds a whole Facto run: its low-rank step, or its full-rank step
    (the planner's Facto specs keep the paper's schedule, full rank first) where that is the
    larger; a refused full-rank estimate refuses the run."""
    if "refused" in full_rank:
        return {"refused": f"its {FULL_RANK_STAGE}: {full_rank['refused']}"}
    if full_rank["peak"] > low_rank["peak"]:
        return {**full_rank, "stage": FULL_RANK_STAGE, "low_rank_peak": low_rank["peak"]}
    return low_rank


def _candidate(spec, estimate, seconds, base_time, budget, claims) -> Candidate:
    peak = estimate.get("peak")
    overhead = None
    if seconds is not None and base_time:
        overhead = round(seconds / base_time - 1.0, 4)
    if peak is None:
        fits, reason = False, f"refused: {estimate['refused']}"
    elif peak <= budget:
        fits = True
        reason = f"estimated peak {format_bytes(peak)} <= budget {format_bytes(budget)}"
        if seconds is None and spec.method == "layerwise":
            reason += "; staged (each unit trains for its own epochs): time not estimated"
    else:
        fits = False
        reason = (
            f"estimated peak {format_bytes(peak)} > budget {format_bytes(budget)} "
            f"(saved activations {format_bytes(estimate.get('saved_activations'))})"
        )
        if estimate.get("stage") == FULL_RANK_STAGE:
            reason += (
                f" in its {FULL_RANK_STAGE}; its low-rank steps take "
                f"{format_bytes(estimate['low_rank_peak'])}"
            )
    return Candidate(
        name=spec.name,
        methods=spec.methods,
        options=dict(spec.options),
        estimated_peak=peak,
        fits=fits,
        time_overhead=overhead,
        accuracy_evidence=_evidence(spec.methods, claims),
        reason=reason,
        seconds_per_step=seconds,
        stage=estimate.get("stage"),
    )


VERIFY_TOLERANCE = 0.25
"""``verify_plan`` fails when the real peak exceeds the estimate by more than this fraction
(plus :data:`CPU_RUNTIME_ALLOWANCE` on the CPU)."""

CPU_RUNTIME_ALLOWANCE = 64 * 2**20
"""Resident memory a CPU step takes beyond what the dispatcher sees (allocator, library
workspaces): cnn4 at 1x28x28, batch 128 measured 108-113 MiB against the meter's 71 MiB."""


def _rss_reset() -> bool:
    """Reset the process' resident-set high-water mark (Linux ``/proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``), so memory a step reuses
    shows as resident-set growth instead of hiding in pages an earlier step left resident."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(name)
            # tensors above 128 KiB get their own mapping, returned when freed: no heap
            # fragmentation in the resident set (M_MMAP_THRESHOLD = -3)
            libc.mallopt(-3, 128 * 1024)
            libc.malloc_trim(0)


def _rss(field_name: str) -> int:
    """``VmRSS`` or ``VmHWM`` of this process in bytes (0 where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _start_window(cuda: bool) -> int:
    """Start measuring a peak: reset the high-water mark and return the memory in use now
    (bytes reserved on the GPU, resident on the CPU after freed heap is handed back)."""
    import gc

    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_reserved()
    _trim_heap()
    if not _rss_reset():
        raise ConfigError("--verify on the CPU needs Linux /proc/self/clear_refs; use a GPU")
    return _rss("VmRSS")


def verify_plan(
    candidate: Candidate,
    model: str,
    input_shape: tuple[int, ...],
    batch: int,
    budget: int,
    *,
    classes: int = 10,
    optimizer: str = "sgd",
    device: str = "cpu",
    steps: int = 3,
    streamed: bool = False,
) -> dict[str, Any]:
    """Run ``steps`` real training steps of ``candidate`` at ``batch`` after one warm-up step
    (the first step in a process also initialises libraries: 120 MiB of resident memory for
    cnn4 here) and measure the real peak: the growth over those steps (on a GPU
    ``torch.cuda.max_memory_reserved`` above what was reserved before; on the CPU the
    process' peak resident set ``VmHWM`` after a reset above ``VmRSS``, freed heap handed back
    to the OS first) plus the tensors held before them (parameters, buffers, optimizer state,
    their storages' sizes; the batch, or each micro-batch in turn, is made inside the window
    as the trainer loads it: with ``streamed`` on the CPU the whole batch, then split). Staged methods run their largest stage's steps twice
    (the meter's real measurement; the second is measured, its model built inside it); a
    Facto candidate whose full-rank epochs bound its run runs full-rank steps.
    Returns ``{"estimated_peak", "real_peak", "source", "budget", "fits", "error"}`` (bytes;
    ``error`` = real / estimated - 1); raises ``BudgetError`` when the real peak exceeds the
    budget the estimate fitted, or the estimate by more than :data:`VERIFY_TOLERANCE`
    (+ :data:`CPU_RUNTIME_ALLOWANCE` on the CPU)."""
    from smallfoot.alternatives import whole_batch_on_device
    from smallfoot.errors import BudgetError
    from smallfoot.memory import unique_storage_bytes

    spec = Spec(candidate.name, candidate.method, dict(candidate.options))
    runner, ctx = _context(spec, model, input_shape, batch, classes, optimizer, device, streamed)
    runner.check_run(ctx)
    cuda = str(device).startswith("cuda")
    if cuda:
        source = "torch.cuda.max_memory_reserved growth + tensors held before"
    else:
        source = "resident-set growth (VmHWM - VmRSS before) + tensors held before"
    torch.manual_seed(0)
    if runner.staged:
        runner.step_memory(ctx, fake=False)  # warm-up (library initialisation)
        start = _start_window(cuda)
        runner.step_memory(ctx, fake=False)
        held = 0
    else:
        build = runner.full_rank_step if candidate.stage == FULL_RANK_STAGE else runner.metered_step
        net, loss_fn, opt = build(ctx)
        net = net.to(device).train()
        parts = (
            candidate.options.get("micro_batches", 1) if "accumulate" in candidate.methods else 1
        )
        whole = whole_batch_on_device(ctx)  # as the trainer loads a stream's batch

        def step_batches():
            # made when their turn comes, as the trainer loads them, so the window holds them
            if whole:
                x = torch.randn(batch, *input_shape, device=device)
                y = torch.randint(classes, (batch,), device=device)
                yield from zip(x.tensor_split(parts), y.tensor_split(parts), strict=True)
                return
            for part in torch.arange(batch).tensor_split(parts):
                if len(part):
                    yield (
                        torch.randn(len(part), *input_shape, device=device),
                        torch.randint(classes, (len(part),), device=device),
                    )

        for step in range(steps + 1):
            if step == 1:  # after a warm-up step: libraries initialised, optimizer state made
                start = _start_window(cuda)
            opt.zero_grad(set_to_none=True)
            for xs, ys in step_batches():
                (loss_fn(net(xs), ys) * (len(xs) / batch)).backward()
                del xs, ys
            opt.step()
        state = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
        held = unique_storage_bytes([*net.parameters(), *net.buffers(), *state])
        del net, opt, state
    if cuda:
        torch.cuda.synchronize()
        real = torch.cuda.max_memory_reserved() - start + held
    else:
        real = _rss("VmHWM") - start + held
    estimated = candidate.estimated_peak
    error = real / estimated - 1.0 if estimated else None
    result = {
        "estimated_peak": estimated,
        "real_peak": int(real),
        "source": source,
        "budget": budget,
        "fits": real <= budget,
        "error": error,
    }
    if estimated is not None and estimated <= budget < real:
        raise BudgetError(
            f"the estimate was wrong: {candidate.name} was estimated at "
            f"{format_bytes(estimated)} but really took {format_bytes(real)} ({source}), over "
            f"the budget {format_bytes(budget)}; pick a candidate with more margin"
        )
    allowance = 0 if cuda else CPU_RUNTIME_ALLOWANCE
    if estimated is not None and real > estimated * (1 + VERIFY_TOLERANCE) + allowance:
        raise BudgetError(
            f"the estimate was wrong: {candidate.name} was estimated at "
            f"{format_bytes(estimated)} but really took {format_bytes(real)} ({source}), "
            f"{error:.0%} more (tolerance {VERIFY_TOLERANCE:.0%} + {format_bytes(allowance)}); "
            "report it with this command"
        )
    return result


class _CallableModule(types.ModuleType):
    """This module, callable as :func:`plan`: ``smallfoot.plan(model, example_input, budget)``
    is the library call while ``smallfoot.plan.verify_plan`` etc. stay reachable."""

    def __call__(self, *args: Any, **kwargs: Any) -> Plan:
        return plan(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule


def fitting_plans(
    base: RunConfig, budget: int | str, cache: str | os.PathLike | None = None
) -> tuple[list[tuple[str, str, dict[str, Any]]], int]:
    """``(plans, budget in bytes)`` for ``compare --budget``: the baseline (the reference) and
    every candidate of :func:`plan` that fits ``budget`` for the run config ``base``'s model,
    data and batch, ranked, as ``(label, method, options)``. None fitting raises
    ``BudgetError``."""
    from smallfoot.errors import BudgetError
    from smallfoot.runner.step import dataset_input

    shape, classes, streamed = dataset_input(base.dataset, base.data_root, dict(base.data_options))
    device = "cuda" if base.device.startswith("cuda") else "cpu"
    result = plan(
        base.model, (base.batch_size, *shape), budget, classes=classes,
        optimizer=base.optimizer, device=device, cache=cache, streamed=streamed,
    )  # fmt: skip
    fitting = [c for c in result.candidates if c.fits]
    if not fitting:
        raise BudgetError(
            f"no candidate fits {format_bytes(result.budget)} for {base.model} at batch "
            f"{base.batch_size} (baseline {format_bytes(result.baseline_peak)}); give a larger "
            "--budget or a smaller --batch-size"
        )
    plans = [(c.name, c.method, dict(c.options)) for c in fitting]
    if not any(method == "baseline" for _, method, _ in plans):
        plans.insert(0, ("baseline (reference, over the budget)", "baseline", {}))
    return plans, result.budget
