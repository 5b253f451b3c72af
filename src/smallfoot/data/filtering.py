"""Redundant-data filtering (thesis sections 5.3-5.4 and 6.8.2).

*Redundancy criterion*: a sample is redundant when all ``k`` of its nearest neighbours
(Euclidean, never itself) belong to its own class. **k-filtering** removes the redundant
samples; the **k-redundancy** is the fraction removed. The thesis runs the nearest-neighbour
search "on large mini-batches of the data" (``batch_size``, the *k-NN chunk*: ``KNN_CHUNK`` =
6,000 samples by default for ``smallfoot filter`` and ``--filter``); ``batch_size=None`` (or 0)
searches the whole set exactly, in tiles so memory stays bounded.

Conventions (the tests pin them down):

- A sample is never its own neighbour; a duplicate of it (another row with the same values)
  is an ordinary neighbour at distance 0, so duplicates with different labels are kept.
- A sample whose block (mini-batch, or the whole set) holds fewer than ``k`` other samples is
  never redundant: there are not ``k`` neighbours to agree. In particular, when ``k`` is at
  least the size of a class, no sample of that class is redundant unless its block has no other
  class nearby at all (all of its ``k`` neighbours must share its label).
- Ties at equal distance are broken by ``torch.topk``; with duplicate distances the chosen
  neighbours (not the criterion) may depend on the tile size.

Also here: the offline ``apply_filter`` used by ``smallfoot train --filter k=K``,
``loss_filter``, and the per-layer diagnostics ``layer_k_redundancy`` (figure 5.14) and
``least_squares_distance`` (eq. 5.3). The online filters (Trainer callbacks) are in
:mod:`smallfoot.train.filtering`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from smallfoot.data.datasets import ArrayDataset
from smallfoot.errors import ConfigError, ShapeError

CHUNK_ELEMENTS = 2**24
"""Distance-matrix entries computed at once (a 4096 x 4096 tile, 64 MiB in float32): bounds
the search's memory."""
KNN_CHUNK = 6000
"""Samples per k-NN chunk of the default k-filter (the thesis searches "large mini-batches";
table 5.1's fractions): the default of ``smallfoot filter --knn-chunk`` and ``--filter``."""


def _flat(features: torch.Tensor) -> torch.Tensor:
    if features.dim() < 2:
        raise ShapeError(f"features must be (N, ...) with N samples, got {tuple(features.shape)}")
    return features.reshape(len(features), -1)


def _blocks(n: int, batch_size: int | None, seed: int) -> list[torch.Tensor]:
    """Index blocks searched independently: one block of all rows, or a seeded random split
    into ``ceil(n / batch_size)`` blocks of (nearly) equal size."""
    if not batch_size or batch_size >= n:
        return [torch.arange(n)]
    if batch_size < 2:
        raise ConfigError(
            f"the k-NN chunk must hold at least 2 samples, got {batch_size}; use 0 for an "
            "exact search over the whole set"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return list(torch.tensor_split(order, -(-n // batch_size)))


def _merge(
    best: tuple[torch.Tensor, torch.Tensor], new: tuple[torch.Tensor, torch.Tensor], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest of two ``(distances, indices)`` candidate lists per row, sorted."""
    distance = torch.cat([best[0], new[0]], dim=1)
    index = torch.cat([best[1], new[1]], dim=1)
    top = distance.topk(min(k, distance.shape[1]), dim=1, largest=False)
    return top.values, index.gather(1, top.indices)


def nearest_neighbours(points: torch.Tensor, k: int, tile: int | None = None) -> torch.Tensor:
    """Indices ``(n, k)`` of the ``k`` nearest other rows of ``points`` ``(n, d)`` (squared
    Euclidean distance, nearest first; a row is never its own neighbour), exactly.

    The distance matrix is symmetric, so only its tiles on and above the diagonal are
    computed: an off-diagonal tile ``(I, J)`` offers candidates to the rows of ``I`` (along
    its rows) and to those of ``J`` (along its columns), halving the ``2 n^2 d`` flops of the
    full matrix. Each tile of squared distances ``|x_i|^2 + |x_j|^2 - 2 x_i . x_j`` is one
    GEMM of the augmented rows ``[x_i, |x_i|^2, 1] . [-2 x_j, 1, |x_j|^2]``. Memory: a few
    tiles plus the running ``(n, k)`` candidates. ``tile`` (default: ``sqrt(CHUNK_ELEMENTS)``
    = 4096) changes speed and memory, not the result (up to ties at equal distance).
    """
    n = len(points)
    if not 1 <= k < n:
        raise ConfigError(f"k must lie in [1, {n - 1}] for {n} points, got {k}")
    tile = tile or int(CHUNK_ELEMENTS**0.5)
    norms = (points * points).sum(1, keepdim=True)
    ones = torch.ones_like(norms)
    left = torch.cat([points, norms, ones], dim=1)
    right = torch.cat([-2 * points, ones, norms], dim=1)
    starts = list(range(0, n, tile))
    best = {}  # per tile of rows: running (distances, indices) of their nearest candidates
    for start in starts:
        size = min(tile, n - start)
        best[start] = (points.new_empty(size, 0), torch.empty(size, 0, dtype=torch.long))
    for i in starts:
        rows = slice(i, min(i + tile, n))
        for j in starts[starts.index(i) :]:
            cols = slice(j, min(j + tile, n))
            distance = left[rows] @ right[cols].T
            if i == j:
                distance.fill_diagonal_(float("inf"))
            best[i] = _merge(best[i], _top(distance, k, cols.start), k)
            if i != j:
                best[j] = _merge(best[j], _top(distance.T.contiguous(), k, rows.start), k)
    return torch.cat([best[start][1] for start in starts])


def _top(distance: torch.Tensor, k: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest entries of each row of a distance tile and their column indices
    (shifted by ``offset``, the tile's first column)."""
    top = distance.topk(min(k, distance.shape[1]), dim=1, largest=False)
    return top.values, top.indices + offset


def neighbour_purity(
    features: torch.Tensor,
    labels: torch.Tensor,
    max_k: int,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """For each sample, how many of its nearest neighbours share its label before the first
    one that does not: an int64 ``(N,)`` in ``[0, min(max_k, block size - 1)]``.

    A sample is redundant for ``k`` exactly when its purity is ``>= k``, so one search serves
    every ``k <= max_k``. ``features`` ``(N, ...)`` (a tensor or lazy inputs, read one block
    at a time) are flattened; ``labels`` ``(N,)``.
    ``batch_size``: search within seeded random blocks of this many samples (``None`` or 0:
    the whole set, exactly). ``chunk_size``: the tile side of :func:`nearest_neighbours`; it
    changes memory and speed, not the result.
    """
    if len(features.shape) < 2:
        raise ShapeError(f"features must be (N, ...) with N samples, got {tuple(features.shape)}")
    n = len(features)
    if labels.shape != (n,):
        raise ShapeError(f"labels must be ({n},), got {tuple(labels.shape)}")
    if max_k < 1:
        raise ConfigError(f"k must be at least 1, got {max_k}")
    purity = torch.zeros(n, dtype=torch.long)
    for block in _blocks(n, batch_size, seed):
        kk = min(max_k, len(block) - 1)
        if kk < 1:
            continue
        # one block's rows at a time: lazy features are read (and held) a block at a time
        neighbours = nearest_neighbours(_flat(features[block]), kk, chunk_size)
        block_labels = labels[block]
        same = block_labels[neighbours] == block_labels[:, None]
        purity[block] = same.long().cumprod(dim=1).sum(dim=1)
    return purity


@dataclass
class FilterResult:
    """The outcome of :func:`k_filter`.

    Attributes:
        kept: sorted indices (int64) of the samples kept.
        removed: sorted indices of the samples removed.
        k: the neighbourhood size.
        redundancy: fraction of the samples removed (the k-redundancy; capped if ``max_fraction``).
        redundant_fraction: fraction that met the redundancy criterion (before any cap).
        seconds: wall time of the search.
    """

    kept: torch.Tensor
    removed: torch.Tensor
    k: int
    redundancy: float
    redundant_fraction: float
    seconds: float


def select_removed(
    redundant: torch.Tensor, max_fraction: float | None = None, seed: int = 0
) -> torch.Tensor:
    """Boolean ``(N,)`` mask of the samples to remove: the redundant ones, or, when more than
    ``max_fraction`` of all samples are redundant, a seeded random subset of them of size
    ``floor(max_fraction * N)``."""
    if max_fraction is None:
        return redundant.clone()
    if not 0.0 <= max_fraction <= 1.0:
        raise ConfigError(f"the cap on the fraction removed must lie in [0, 1], got {max_fraction}")
    limit = int(max_fraction * len(redundant))
    candidates = redundant.nonzero().flatten()
    if len(candidates) <= limit:
        return redundant.clone()
    choice = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed))
    removed = torch.zeros_like(redundant)
    removed[candidates[choice[:limit]]] = True
    return removed


def k_filter(
    features: torch.Tensor,
    labels: torch.Tensor,
    k: int,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    max_fraction: float | None = None,
    seed: int = 0,
) -> FilterResult:
    """k-filtering: drop the samples all of whose ``k`` nearest neighbours share their label.

    ``features`` ``(N, ...)`` (flattened), ``labels`` ``(N,)``. ``batch_size``: search within
    seeded random mini-batches of that many samples as the thesis does (``None``: exactly, over
    the whole set). ``max_fraction``: remove at most this fraction of the data (section 6.8.2
    caps at 0.6). Returns the kept/removed indices and the k-redundancy.
    """
    start = time.perf_counter()
    purity = neighbour_purity(features, labels, k, batch_size, chunk_size, seed)
    redundant = purity >= k
    removed = select_removed(redundant, max_fraction, seed)
    n = max(len(labels), 1)
    return FilterResult(
        kept=(~removed).nonzero().flatten(),
        removed=removed.nonzero().flatten(),
        k=k,
        redundancy=int(removed.sum()) / n,
        redundant_fraction=int(redundant.sum()) / n,
        seconds=time.perf_counter() - start,
    )


def k_redundancy(
    features: torch.Tensor,
    labels: torch.Tensor,
    ks: Iterable[int],
    batch_size: int | None = None,
    chunk_size: int | None = None,
    seed: int = 0,
) -> dict[int, float]:
    """``{k: fraction of samples redundant}`` for every ``k`` in ``ks``, from one search."""
    ks = sorted({int(k) for k in ks})
    if not ks:
        raise ConfigError("give at least one k, e.g. 5,10,42")
    purity = neighbour_purity(features, labels, ks[-1], batch_size, chunk_size, seed)
    n = max(len(labels), 1)
    return {k: int((purity >= k).sum()) / n for k in ks}


# -- offline filtering (smallfoot train --filter k=K) ------------------------------------------


@dataclass
class FilterSpec:
    """A parsed ``--filter`` value: ``"k=42"``, ``"k=10,cap=0.6,knn_chunk=0,seed=1"`` (offline:
    the training set is k-filtered once, before training), ``"k=10,online=true,from=2,cap=0.6"``
    (online k-filtering, thesis section 6.8.2) or ``"loss=0.25,from=2"`` (online loss filter).

    Attributes:
        k: neighbourhood size of a k-filter (``None`` for a loss filter).
        cap: the largest fraction of the data a k-filter removes (``None``: no cap).
        knn_chunk: samples per k-NN chunk, searched independently (the thesis' procedure;
            default ``KNN_CHUNK``); 0: exact search over the whole training set. Not the
            training batch size.
        seed: seed of the chunk split and of the capped selection.
        loss: the fraction of each large batch a loss filter drops (the lowest losses).
        online: filter during training, through the Trainer (a loss filter always is).
        start: online: the first epoch (1-based) trained on the filtered data.
        every: online: epochs between refreshes of the filtered subset.
        layer: online k-filter: the module whose output is searched (default: the input).
        batch: loss filter: samples per large batch whose lowest-loss fraction is dropped.
    """

    k: int | None = None
    cap: float | None = None
    knn_chunk: int = KNN_CHUNK
    seed: int = 0
    loss: float | None = None
    online: bool = False
    start: int = 1
    every: int = 1
    layer: str | None = None
    batch: int = 4096

    KEYS = ("k", "loss", "cap", "knn_chunk", "seed", "online", "from", "every", "layer", "batch")
    EXAMPLE = "k=42, k=10,cap=0.6,knn_chunk=6000, k=10,online=true,from=2 or loss=0.25,from=2"

    @classmethod
    def parse(cls, spec: str | dict[str, Any]) -> FilterSpec:
        """From ``"k=42,cap=0.6"`` or a dict with the same keys; bad input raises ``ConfigError``."""
        if isinstance(spec, str):
            items = {}
            for part in filter(None, (p.strip() for p in spec.split(","))):
                key, sep, value = part.partition("=")
                if not sep:
                    raise ConfigError(
                        f"filter item {part!r} must look like KEY=VALUE (e.g. --filter k=42)"
                    )
                items[key.strip()] = value.strip()
        else:
            items = dict(spec)
        unknown = sorted(set(items) - set(cls.KEYS))
        if unknown or ("k" in items) == ("loss" in items):
            raise ConfigError(
                f"filter {spec!r}: give k (k-filter) or loss (loss filter), with cap, knn_chunk "
                f"(samples per k-NN chunk, 0 = exact), seed, online, from, every, layer, batch, "
                f"e.g. {cls.EXAMPLE}" + (f"; unknown: {', '.join(unknown)}" if unknown else "")
            )
        try:
            parsed = cls(
                k=int(items["k"]) if "k" in items else None,
                loss=float(items["loss"]) if "loss" in items else None,
                cap=float(items["cap"]) if items.get("cap") is not None else None,
                knn_chunk=int(items.get("knn_chunk", KNN_CHUNK)),
                seed=int(items.get("seed", 0)),
                online=_flag(items.get("online", "loss" in items)),
                start=int(items.get("from", 1)),
                every=int(items.get("every", 1)),
                layer=items.get("layer"),
                batch=int(items.get("batch", 4096)),
            )
        except ValueError as exc:
            raise ConfigError(f"filter {spec!r}: {exc}; e.g. {cls.EXAMPLE}") from None
        parsed._check(spec, items)
        return parsed

    def _check(self, spec, items: dict[str, Any]) -> None:
        if self.k is not None and self.k < 1:
            raise ConfigError(f"filter {spec!r}: k must be at least 1")
        if self.cap is not None and not 0.0 < self.cap <= 1.0:
            raise ConfigError(f"filter {spec!r}: cap must be a fraction in (0, 1], e.g. 0.6")
        if self.loss is not None and not 0.0 <= self.loss < 1.0:
            raise ConfigError(f"filter {spec!r}: loss must be a fraction in [0, 1), e.g. 0.25")
        if self.loss is not None and not self.online:
            raise ConfigError(f"filter {spec!r}: a loss filter runs online; drop online=false")
        if self.knn_chunk < 0 or self.knn_chunk == 1:
            raise ConfigError(
                f"filter {spec!r}: knn_chunk must be 0 (exact search) or at least 2, e.g. "
                "k=42,knn_chunk=6000"
            )
        if self.start < 1 or self.every < 1 or self.batch < 1:
            raise ConfigError(f"filter {spec!r}: from, every and batch must be at least 1")
        if self.k is not None and "batch" in items:
            raise ConfigError(
                f"filter {spec!r}: batch is the loss filter's; a k-filter's chunks are knn_chunk"
            )
        if self.loss is not None and {"cap", "knn_chunk", "layer"} & set(items):
            raise ConfigError(f"filter {spec!r}: cap, knn_chunk and layer apply to k-filters")
        online_only = sorted({"from", "every", "layer"} & set(items))
        if not self.online and online_only:
            raise ConfigError(
                f"filter {spec!r}: {', '.join(online_only)} only apply to online filters; "
                "add online=true"
            )


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no"):
        return False
    raise ValueError(f"online must be true or false, got {value!r}")


def apply_filter(
    dataset: ArrayDataset, spec: str | dict[str, Any] | FilterSpec
) -> tuple[ArrayDataset, dict[str, Any]]:
    """k-filter a training set before training (an offline ``--filter``): returns the kept
    subset and a record.

    The record (written to the run directory's ``data.json``) holds ``k``, ``cap``,
    ``knn_chunk`` (0: exact),
    ``redundancy``, ``kept``, ``total``, ``seconds``, the per-class counts removed and the
    ``removed`` indices (into the training set as loaded, after ``--train-limit``).
    """
    spec = spec if isinstance(spec, FilterSpec) else FilterSpec.parse(spec)
    if spec.online:
        raise ConfigError(
            "an online --filter (online=true or loss=) filters during training, in the Trainer; "
            "apply_filter filters offline"
        )
    result = k_filter(
        dataset.x,
        dataset.y,
        spec.k,
        batch_size=spec.knn_chunk,
        max_fraction=spec.cap,
        seed=spec.seed,
    )
    removed_labels = dataset.y[result.removed]
    record = {
        "method": "k-filter",
        "k": spec.k,
        "cap": spec.cap,
        "knn_chunk": spec.knn_chunk,
        "seed": spec.seed,
        "redundancy": result.redundancy,
        "redundant_fraction": result.redundant_fraction,
        "kept": len(result.kept),
        "total": len(dataset),
        "seconds": result.seconds,
        "removed_per_class": torch.bincount(removed_labels, minlength=dataset.num_classes).tolist(),
        "removed": result.removed.tolist(),
    }
    return dataset.subset(result.kept), record


# -- representations and per-layer diagnostics -------------------------------------------------

ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.ELU, nn.SiLU, nn.Tanh, nn.Sigmoid)


def default_layers(model: nn.Module) -> list[str]:
    """Names of the modules whose outputs are the hidden representations: every activation
    module, then the last Linear/Conv layer (the output)."""
    names = [name for name, m in model.named_modules() if isinstance(m, ACTIVATIONS)]
    weights = [name for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return names + weights[-1:]


@torch.no_grad()
def representations(
    model: nn.Module,
    x: torch.Tensor,
    layers: Sequence[str] | None = None,
    batch_size: int = 512,
    include_input: bool = True,
) -> dict[str, torch.Tensor]:
    """Flattened outputs ``(N, D_i)`` of the named modules for inputs ``x`` ``(N, ...)`` (a
    tensor or lazy inputs, read ``batch_size`` at a time), in evaluation mode (the model's mode
    is restored); with ``include_input``, key ``"input"`` holds ``x`` flattened first.

    ``layers``: module names (``model.named_modules()``), default :func:`default_layers`.
    """
    layers = list(layers) if layers is not None else default_layers(model)
    modules = dict(model.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        raise ConfigError(
            f"model has no module named {', '.join(map(repr, missing))}; "
            f"choose among: {', '.join(n for n in modules if n)}"
        )
    device = next(model.parameters()).device
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    handles = [
        modules[name].register_forward_hook(
            lambda m, i, out, name=name: outputs[name].append(out.detach().flatten(1).cpu().clone())
        )
        for name in layers
    ]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(x), batch_size):
            model(x[start : start + batch_size].to(device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    found = {name: torch.cat(outputs[name]) for name in layers}
    return {"input": _flat(x[:]).cpu(), **found} if include_input else found


def least_squares_distance(z: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """LSD of eq. 5.3: ``||Y - Z Z^+ Y||_F^2 / m`` for a representation ``z`` ``(m, ...)``
    and one-hot targets ``Y`` of ``labels`` ``(m,)``.

    Computed in float64 through an SVD of ``Z`` (rank by the ``pinv`` tolerance). It is 0 when
    ``Z`` has rank ``m`` (more independent features than samples), so compare layers at a
    sample count above their widths.
    """
    z = _flat(z).double()
    y = torch.zeros(len(z), num_classes, dtype=torch.float64)
    y[torch.arange(len(z)), labels] = 1.0
    u, s, _ = torch.linalg.svd(z, full_matrices=False)
    tolerance = max(z.shape) * torch.finfo(torch.float64).eps * (s[0] if len(s) else 0.0)
    basis = u[:, s > tolerance]
    residual = y - basis @ (basis.T @ y)
    return float(residual.pow(2).sum() / len(z))


def layer_k_redundancy(
    model: nn.Module,
    dataset: ArrayDataset,
    ks: Iterable[int] = (5, 10, 20),
    layers: Sequence[str] | None = None,
    batch_size: int | None = None,
) -> dict[str, dict[int, float]]:
    """k-redundancy of the input and of each layer's representation (figure 5.14):
    ``{layer: {k: fraction redundant}}``, over the whole ``dataset`` (or k-NN mini-batches)."""
    reps = representations(model, dataset.x, layers)
    return {name: k_redundancy(z, dataset.y, ks, batch_size) for name, z in reps.items()}


def layer_lsd(
    model: nn.Module, dataset: ArrayDataset, layers: Sequence[str] | None = None
) -> dict[str, float]:
    """Least squares distance (eq. 5.3) of the input and of each layer's representation."""
    reps = representations(model, dataset.x, layers)
    return {
        name: least_squares_distance(z, dataset.y, dataset.num_classes) for name, z in reps.items()
    }


# -- loss filtering (used by the online filters in smallfoot.train.filtering) -----------------


def loss_filter(
    losses: torch.Tensor, fraction: float, batch_size: int | None = None
) -> torch.Tensor:
    """Sorted indices kept when the lowest-loss ``fraction`` of each batch is dropped.

    ``losses`` ``(N,)`` per sample, in order; consecutive batches of ``batch_size`` (``None``:
    one batch) each drop exactly ``floor(fraction * batch length)`` samples, lowest loss first.
    """
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"loss-filter fraction must lie in [0, 1), got {fraction}")
    size = batch_size or max(len(losses), 1)
    kept = []
    for start in range(0, len(losses), size):
        batch = losses[start : start + size]
        drop = int(fraction * len(batch))
        order = batch.argsort(stable=True)
        kept.append(order[drop:] + start)
    return torch.cat(kept).sort().values if kept else torch.zeros(0, dtype=torch.long)
