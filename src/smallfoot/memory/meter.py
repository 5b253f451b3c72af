"""The memory meter: what one training step keeps alive, byte for byte.

Every tensor storage that exists during the measured step is followed from its allocation to
its release:

* parameters, buffers, the input batch and the optimizer state are registered when the step
  starts;
* every storage an ATen op allocates is seen by a ``TorchDispatchMode`` (this covers the
  backward pass and custom ``autograd.Function``s, whose ops go through the dispatcher too);
* a storage's release is seen by a weak reference, and ``UntypedStorage.resize_`` (which no
  dispatch mode sees) is patched for the step, so a custom Function that frees or shrinks a
  storage is charged what it really keeps.

Each storage is charged once however many views point into it, with its real dtype size.
After the step every storage gets one category: ``gradients`` (ends up as a ``.grad``),
``optimizer_state``, ``saved_activations`` (allocated in the forward pass and still alive when
it ends, i.e. kept for backward; the model output and the loss count only if autograd saved
them), or ``temporaries`` (everything else). Replaying the allocation/release events gives the
live bytes over time, the peak and the phase where it happens. ``estimate`` runs the same code
on fake tensors, so nothing is allocated.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from smallfoot.errors import ConfigError, ShapeError

CATEGORIES = (
    "parameters",
    "buffers",
    "inputs",
    "gradients",
    "optimizer_state",
    "saved_activations",
    "temporaries",
)
"""Every byte live during a measured step is in exactly one of these."""

PHASES = ("forward", "backward", "optimizer")

LOSS_MODULE = "(loss)"
"""``by_module`` key of what the loss function saves."""


@dataclass
class MemoryReport:
    """Memory of one training step; all byte counts are integers in bytes.

    ``parameters``, ``buffers``, ``inputs`` (the batch), ``gradients`` (the ``.grad`` of every
    parameter after backward) and ``optimizer_state`` (after the step) are what those objects
    occupy. ``saved_activations`` is what autograd keeps from the forward pass for backward,
    measured when the forward pass (including the loss) ends. ``temporaries`` is the largest
    amount of other memory live at any moment of the step. ``peak`` is the largest total of
    live bytes, ``peak_phase`` the phase where it happens and ``peak_breakdown`` its split
    into the categories (summing to ``peak``). ``per_pixel`` divides by batch x height x
    width (reversible-designs eq. 7d / 10b). ``by_module`` maps each module name (as in
    ``named_modules``; ``"(loss)"`` for the loss) to the saved activations it handed to autograd
    first (or, when hidden from our hooks, that were allocated while it ran). ``saved_by_hooks`` is the cross-check: unique storages autograd handed to
    ``saved_tensors_hooks`` (hooks installed inside the model, e.g. by checkpointing or
    offloading, hide theirs). ``timeline`` holds the live bytes after every event.
    """

    parameters: int
    buffers: int
    inputs: int
    gradients: int
    optimizer_state: int
    saved_activations: int
    temporaries: int
    peak: int
    peak_phase: str
    peak_breakdown: dict[str, int]
    per_pixel: dict[str, float]
    batch: int
    input_shape: tuple[int, ...]
    estimated: bool
    by_module: dict[str, dict[str, int]]
    saved_by_hooks: int
    timeline: dict[str, Any] = field(repr=False, default_factory=dict)
    stage: str | None = None
    """for staged methods: the stage this step belongs to (their largest by peak)"""
    model: str | None = None
    """the name of the model metered, where a named configuration built it"""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field except the timeline (see :meth:`timeline_dict`)."""
        return {
            "parameters": self.parameters,
            "buffers": self.buffers,
            "inputs": self.inputs,
            "gradients": self.gradients,
            "optimizer_state": self.optimizer_state,
            "saved_activations": self.saved_activations,
            "temporaries": self.temporaries,
            "peak": self.peak,
            "peak_phase": self.peak_phase,
            "peak_breakdown": dict(self.peak_breakdown),
            "per_pixel": dict(self.per_pixel),
            "batch": self.batch,
            "input_shape": list(self.input_shape),
            "estimated": self.estimated,
            "by_module": {k: dict(v) for k, v in self.by_module.items()},
            "saved_by_hooks": self.saved_by_hooks,
            **({"stage": self.stage} if self.stage is not None else {}),
            **({"model": self.model} if self.model is not None else {}),
        }

    def timeline_dict(self) -> dict[str, Any]:
        """The timeline: ``live`` (bytes per category and ``total``; point 0 is the start of
        the step, point i the state after its i-th allocation/release/resize), ``phase`` of
        each point, ``phases`` and ``modules`` (forward leaf modules) as ``[name, first,
        end]`` point ranges (end exclusive), and ``peak_index``."""
        return self.timeline


class _Storage:
    """One tracked storage: its size now and what we know of its life."""

    __slots__ = ("nbytes", "kind", "phase", "module", "saver", "packed", "output", "saved")

    def __init__(self, nbytes: int, kind: str | None, phase: str, module: str):
        self.nbytes = nbytes
        self.kind = kind  # None: allocated during the step (category decided after it)
        self.phase = phase
        self.module = module
        self.saver: str | None = None  # the module that first handed it to autograd
        self.packed = False
        self.output = False
        self.saved = False


class _Tracker(TorchDispatchMode):
    """Follows storage allocations (dispatch), releases (weakrefs) and resizes (patch)."""

    def __init__(self, module_names: dict[int, str]):
        super().__init__()
        self.module_names = module_names
        self.live: dict[int, tuple[weakref.ref, _Storage]] = {}
        self.infos: list[_Storage] = []
        self.events: list[tuple[_Storage, int, str]] = []
        self.phase = "forward"
        self.module_stack: list[str] = []
        self.module_spans: list[list[Any]] = []
        self.phase_starts: list[tuple[str, int]] = []
        self.end_of_forward: list[tuple[_Storage, int]] = []
        self.hooked = 0
        self.active = False
        self._orig_resize = torch.UntypedStorage.resize_

    # -- storages ---------------------------------------------------------------------------
    def lookup(self, storage: torch.UntypedStorage) -> _Storage | None:
        """The record of a live storage, or None when it is not tracked."""
        entry = self.live.get(id(storage))
        if entry is not None and entry[0]() is storage:
            return entry[1]
        return None

    def add(self, storage: torch.UntypedStorage, kind: str | None) -> _Storage:
        """Start following ``storage`` (``kind`` None: allocated by the step)."""
        module = self.module_stack[-1] if self.module_stack else ""
        info = _Storage(storage.nbytes(), kind, self.phase, module)
        key = id(storage)
        ref = weakref.ref(storage, lambda _ref, info=info, key=key: self._released(info, key))
        self.live[key] = (ref, info)
        self.infos.append(info)
        self._event(info, info.nbytes)
        return info

    def register(self, tensor: torch.Tensor, kind: str) -> None:
        """Register a tensor that exists before the step (first registration wins)."""
        if tensor.layout is torch.strided and self.lookup(tensor.untyped_storage()) is None:
            self.add(tensor.untyped_storage(), kind)

    def _event(self, info: _Storage, delta: int) -> None:
        if delta and info.kind != "external":
            self.events.append((info, delta, self.phase))

    def _released(self, info: _Storage, key: int) -> None:
        entry = self.live.get(key)
        if entry is not None and entry[1] is info:
            del self.live[key]
        if self.active:
            self._event(info, -info.nbytes)
        info.nbytes = 0

    def _resized(self, storage: torch.UntypedStorage) -> None:
        info = self.lookup(storage)
        if info is not None and info.nbytes != storage.nbytes():
            delta = storage.nbytes() - info.nbytes
            info.nbytes = storage.nbytes()
            self._event(info, delta)

    # -- phases and modules -----------------------------------------------------------------
    def set_phase(self, phase: str) -> None:
        """Mark the start of ``phase`` (forward, backward, optimizer)."""
        self.phase = phase
        self.phase_starts.append((phase, len(self.events)))

    def enter_module(self, module: nn.Module) -> None:
        """Forward pre-hook: ``module`` starts; leaf modules of the forward pass are marked."""
        name = self.module_names.get(id(module))
        if name is None:
            name = self.module_stack[-1] if self.module_stack else ""
        self.module_stack.append(name)
        if self.phase == "forward" and next(module.children(), None) is None:
            self.module_spans.append([name, len(self.events), len(self.events)])

    def exit_module(self, module: nn.Module) -> None:
        """Forward hook: ``module`` ends."""
        if self.module_stack:
            name = self.module_stack.pop()
            if self.phase == "forward" and self.module_spans and self.module_spans[-1][0] == name:
                self.module_spans[-1][2] = len(self.events)

    # -- dispatch ---------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for t in tree_leaves((args, kwargs)):
            # storages from outside the step (constants, views of untracked data) are not
            # charged, and an op returning a view of one must not count as an allocation
            if (
                isinstance(t, torch.Tensor)
                and t.layout is torch.strided
                and self.lookup(t.untyped_storage()) is None
            ):
                self.add(t.untyped_storage(), "external")
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.layout is torch.strided:
                storage = t.untyped_storage()
                if self.lookup(storage) is None:
                    self.add(storage, None)
                else:
                    self._resized(storage)
        return out

    def __enter__(self):
        self.active = True
        orig, tracker = self._orig_resize, self

        def resize_(storage, size):
            orig(storage, size)
            tracker._resized(storage)

        torch.UntypedStorage.resize_ = resize_
        return super().__enter__()

    def __exit__(self, *exc):
        self.active = False
        torch.UntypedStorage.resize_ = self._orig_resize
        return super().__exit__(*exc)


def _strided(tensors) -> list[torch.Tensor]:
    return [t for t in tensors if isinstance(t, torch.Tensor) and t.layout is torch.strided]


def unique_storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (each storage once, whatever the views)."""
    seen = {}
    for t in _strided(tensors):
        storage = t.untyped_storage()
        seen[id(storage)] = storage
    return sum(s.nbytes() for s in seen.values())


def _optimizer_tensors(optimizer: torch.optim.Optimizer | None) -> list[torch.Tensor]:
    if optimizer is None:
        return []
    return [t for s in optimizer.state.values() for t in tree_leaves(s) if torch.is_tensor(t)]


def split_batch(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(x, y)`` from a batch given as a tensor ``x`` or a pair ``(x, y)``."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and torch.is_tensor(batch[0]):
        return batch[0], batch[1]
    raise ShapeError(
        f"the meter needs a batch tensor x or a pair (x, y) of tensors; got {type(batch).__name__}"
    )


def default_loss(output: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy of ``output`` (N, classes) against ``target`` (N,) int64 class indices;
    without a target, the sum of the output."""
    if target is None:
        return output.sum()
    return F.cross_entropy(output, target)


def _zero_grad(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    model.zero_grad(set_to_none=True)


def _checked(loss) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ConfigError(f"the loss function must return a scalar tensor, got {shape}")
    return loss


def _train_step(model, x, y, loss_fn, optimizer, tracker: _Tracker | None) -> None:
    """One forward/backward/optimizer step; with a tracker, marks phases and saved storages."""
    _zero_grad(model, optimizer)
    if tracker is None:
        loss = _checked(loss_fn(model(x), y))
        loss.backward()
        if optimizer is not None:
            optimizer.step()
        return

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.layout is torch.strided:
            info = tracker.lookup(t.untyped_storage())
            if info is not None:
                info.packed = True
                if info.saver is None and tracker.module_stack:
                    info.saver = tracker.module_stack[-1]
        return t

    tracker.set_phase("forward")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        output = model(x)
        tracker.module_stack.append(LOSS_MODULE)
        loss = loss_fn(output, y)
        tracker.module_stack.pop()
    _checked(loss)
    for t in _strided(tree_leaves((output, loss))):
        info = tracker.lookup(t.untyped_storage())
        if info is not None:
            info.output = True
    for _, info in tracker.live.values():
        if info.kind is None and info.nbytes:
            info.saved = info.packed or not info.output
            if info.saved:
                tracker.end_of_forward.append((info, info.nbytes))
            if info.packed:
                tracker.hooked += info.nbytes
    del output
    tracker.set_phase("backward")
    loss.backward()
    del loss
    if optimizer is not None:
        tracker.set_phase("optimizer")
        optimizer.step()


def _pixels(x: torch.Tensor) -> int:
    if x.dim() >= 4:
        return int(x.shape[0] * x.shape[-2] * x.shape[-1])
    return int(x.shape[0])


def _run(model, batch, loss_fn, optimizer, steps: int, estimated: bool) -> MemoryReport:
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be a positive integer, got {steps!r}")
    x, y = split_batch(batch)
    if x.dim() < 1 or x.shape[0] < 1:
        raise ShapeError(f"the batch needs a leading batch dimension >= 1, got {tuple(x.shape)}")
    loss_fn = loss_fn if loss_fn is not None else default_loss
    model.train()
    for _ in range(steps - 1):
        _train_step(model, x, y, loss_fn, optimizer, None)

    tracker = _Tracker({id(m): name for name, m in model.named_modules()})
    _zero_grad(model, optimizer)
    for t in model.parameters():
        tracker.register(t, "parameters")
    for t in model.buffers():
        tracker.register(t, "buffers")
    for t in (x, y):
        if t is not None:
            tracker.register(t, "inputs")
    for t in _optimizer_tensors(optimizer):
        tracker.register(t, "optimizer_state")
    pre = nn.modules.module.register_module_forward_pre_hook(
        lambda m, args: tracker.enter_module(m)
    )
    post = nn.modules.module.register_module_forward_hook(
        lambda m, args, out: tracker.exit_module(m), always_call=True
    )
    try:
        with tracker:
            _train_step(model, x, y, loss_fn, optimizer, tracker)
    finally:
        pre.remove()
        post.remove()
        tracker.active = False
    for p in model.parameters():
        if p.grad is not None:
            info = tracker.lookup(p.grad.untyped_storage())
            if info is not None and info.kind is None:
                info.kind = "gradients"
    for t in _optimizer_tensors(optimizer):
        info = tracker.lookup(t.untyped_storage())
        if info is not None and info.kind is None:
            info.kind = "optimizer_state"
    for info in tracker.infos:
        if info.kind is None:
            info.kind = "saved_activations" if info.saved else "temporaries"
    return _report(tracker, model, x, optimizer, estimated)


def _report(tracker: _Tracker, model, x, optimizer, estimated: bool) -> MemoryReport:
    # the registrations (what exists when the step starts) form point 0 of the timeline
    first = tracker.phase_starts[0][1] if tracker.phase_starts else len(tracker.events)
    live = dict.fromkeys(CATEGORIES, 0)
    for info, delta, _ in tracker.events[:first]:
        live[info.kind] += delta
    series: dict[str, list[int]] = {c: [live[c]] for c in CATEGORIES}
    series["total"] = [sum(live.values())]
    phases: list[str] = ["start"]
    peak, peak_index, peak_phase = series["total"][0], 0, "forward"
    max_temp = max_backward_temp = 0
    for index, (info, delta, phase) in enumerate(tracker.events[first:], start=1):
        live[info.kind] += delta
        total = sum(live.values())
        for c in CATEGORIES:
            series[c].append(live[c])
        series["total"].append(total)
        phases.append(phase)
        if total > peak:
            peak, peak_index, peak_phase = total, index, phase
        max_temp = max(max_temp, live["temporaries"])
        if phase == "backward":
            max_backward_temp = max(max_backward_temp, live["temporaries"])
    breakdown = {c: series[c][peak_index] if series[c] else 0 for c in CATEGORIES}

    by_module: dict[str, dict[str, int]] = {}
    saved = 0
    for info, nbytes in tracker.end_of_forward:
        if info.kind != "saved_activations":
            continue
        saved += nbytes
        owner = info.saver if info.saver is not None else info.module
        slot = by_module.setdefault(owner, {"saved_activations": 0, "tensors": 0})
        slot["saved_activations"] += nbytes
        slot["tensors"] += 1

    def total_of(kind: str, final: bool) -> int:
        infos = [i for i in tracker.infos if i.kind == kind]
        if final:
            return sum(i.nbytes for i in infos)
        return sum(d for i, d, _ in tracker.events if i.kind == kind and d > 0)

    # event i of the step is timeline point i - first + 1; a span covers points [start, end)
    spans = []
    for i, (name, start) in enumerate(tracker.phase_starts):
        end = tracker.phase_starts[i + 1][1] if i + 1 < len(tracker.phase_starts) else None
        end = len(tracker.events) if end is None else end
        spans.append([name, start - first + 1, end - first + 1])
    modules = [[name, a - first + 1, b - first + 1] for name, a, b in tracker.module_spans]
    pixels = _pixels(x)
    return MemoryReport(
        parameters=unique_storage_bytes(model.parameters()),
        buffers=total_of("buffers", True),
        inputs=total_of("inputs", True),
        gradients=total_of("gradients", True),
        optimizer_state=total_of("optimizer_state", True),
        saved_activations=saved,
        temporaries=max_temp,
        peak=peak,
        peak_phase=peak_phase,
        peak_breakdown=breakdown,
        per_pixel={
            "pixels": pixels,
            "saved_activations": saved / pixels,
            "activation_gradients": max_backward_temp / pixels,
            "total": (saved + max_backward_temp) / pixels,
        },
        batch=int(x.shape[0]),
        input_shape=tuple(int(s) for s in x.shape[1:]),
        estimated=estimated,
        by_module=by_module,
        saved_by_hooks=tracker.hooked,
        timeline={
            "live": series,
            "phase": phases,
            "phases": spans,
            "modules": modules,
            "peak_index": peak_index,
        },
    )


class _Restore:
    """Snapshot of a model's tensors, gradients, modes, the optimizer and the RNG, put back on exit."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None):
        self.model, self.optimizer = model, optimizer

    def __enter__(self):
        model = self.model
        self.tensors = [(t, t.detach().clone()) for t in [*model.parameters(), *model.buffers()]]
        self.grads = [
            (p, None if p.grad is None else p.grad.detach().clone()) for p in model.parameters()
        ]
        self.modes = [(m, m.training) for m in model.modules()]
        self.optim = (
            copy.deepcopy(self.optimizer.state_dict()) if self.optimizer is not None else None
        )
        self.rng = torch.get_rng_state()
        return self

    def __exit__(self, *exc):
        with torch.no_grad():
            for t, saved in self.tensors:
                t.copy_(saved)
        for p, grad in self.grads:
            p.grad = grad
        for m, mode in self.modes:
            m.training = mode
        if self.optimizer is not None:
            self.optimizer.load_state_dict(self.optim)
        torch.set_rng_state(self.rng)
        return False


def measure(
    model: nn.Module,
    batch,
    loss_fn: Callable | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    steps: int = 2,
) -> MemoryReport:
    """Measure one real training step of ``model`` on ``batch`` and return its memory.

    ``batch`` is ``x`` or ``(x, y)``; ``x`` is (N, C, H, W) for images or (N, D).
    ``loss_fn(output, y) -> scalar`` (default: cross-entropy, or ``output.sum()`` without
    ``y``). With an ``optimizer`` the step ends with ``optimizer.step()``. ``steps - 1``
    untracked steps run first, so the measured step is the steady one (optimizer state exists).
    Feed a copy of the batch, not a slice of a larger tensor: the whole storage is charged.
    Afterwards the parameters, buffers, gradients, training flags, optimizer state and the
    global RNG are exactly as before.
    """
    with _Restore(model, optimizer):
        return _run(model, batch, loss_fn, optimizer, steps, estimated=False)


def _fake_model(model: nn.Module, mode: FakeTensorMode) -> nn.Module:
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(mode.from_tensor(p.detach()), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = mode.from_tensor(b)
    return copy.deepcopy(model, memo)


def _fake_optimizer(optimizer, model: nn.Module, fake: nn.Module):
    if optimizer is None:
        return None
    to_fake = {id(p): q for p, q in zip(model.parameters(), fake.parameters(), strict=True)}
    groups = []
    for group in optimizer.param_groups:
        missing = [p for p in group["params"] if id(p) not in to_fake]
        if missing:
            raise ConfigError(
                "estimate: the optimizer holds tensors that are not parameters of the model; "
                "pass an optimizer over model.parameters()"
            )
        groups.append({**group, "params": [to_fake[id(p)] for p in group["params"]]})
    return type(optimizer)(groups)


def estimate(
    model: nn.Module,
    batch,
    loss_fn: Callable | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    steps: int = 2,
) -> MemoryReport:
    """:func:`measure` on fake tensors: the same step, the same accounting, nothing allocated.

    ``model`` (and ``batch``) may be real, or built under a ``FakeTensorMode`` already (the
    way to estimate a model too large to build): real ones are copied as fake tensors, so the
    model and optimizer given are never touched. ``optimizer`` is re-created as the same class
    with the same parameter groups over the fake copy. The report has ``estimated=True``.
    """
    params = list(model.parameters()) + list(model.buffers())
    fake_params = [p for p in params if isinstance(p, FakeTensor)]
    if fake_params:
        mode = fake_params[0].fake_mode
        if len(fake_params) != len(params):
            raise ConfigError(
                "estimate: the model mixes fake and real tensors; build it in one mode"
            )
        fake, fake_opt = model, optimizer
    else:
        mode = FakeTensorMode(allow_non_fake_inputs=True)
        fake = _fake_model(model, mode)
        fake_opt = _fake_optimizer(optimizer, model, fake)
    x, y = split_batch(batch)
    fx = x if isinstance(x, FakeTensor) else mode.from_tensor(x)
    fy = y if y is None or isinstance(y, FakeTensor) else mode.from_tensor(y)
    with mode:
        return _run(fake, (fx, fy) if y is not None else fx, loss_fn, fake_opt, steps, True)
