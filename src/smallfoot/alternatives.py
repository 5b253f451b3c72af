"""The tools a user would pick instead of smallfoot, registered as methods so every benchmark
compares against them: ``checkpoint`` (activation checkpointing), ``offload`` (saved
tensors moved to CPU memory) and ``accumulate`` (gradient accumulation over micro-batches).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

from smallfoot.data import StreamDataset
from smallfoot.errors import ConfigError
from smallfoot.memory.meter import MemoryReport
from smallfoot.methods import (
    Method,
    RunContext,
    composed_options,
    example_batch,
    register_method,
)
from smallfoot.train.trainer import Trainer


class _KeepRunningStats:
    """Context of a checkpoint's recomputation: batch-norm running statistics (and counters)
    of the segment are put back on exit, so the recomputed forward does not update them a
    second time."""

    def __init__(self, modules: list[nn.Module]):
        self.buffers = [
            b
            for m in modules
            for sub in m.modules()
            if isinstance(sub, nn.modules.batchnorm._BatchNorm)
            for b in sub.buffers()
        ]

    def __enter__(self):
        self.saved = [b.clone() for b in self.buffers]

    def __exit__(self, *exc):
        with torch.no_grad():
            for b, saved in zip(self.buffers, self.saved, strict=True):
                b.copy_(saved)
        return False


SELECTIVE_SAVED_OPS = frozenset(
    {
        torch.ops.aten.convolution,
        torch.ops.aten.mm,
        torch.ops.aten.addmm,
        torch.ops.aten.bmm,
        torch.ops.aten.baddbmm,
        torch.ops.aten._scaled_dot_product_flash_attention,
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu,
        torch.ops.aten._scaled_dot_product_efficient_attention,
        torch.ops.aten._scaled_dot_product_cudnn_attention,
    }
)
"""What ``--policy selective`` keeps: the results of convolutions, matrix products and
attention, the expensive operators; everything else in a segment is recomputed."""


def _selective_policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    if op.overloadpacket in SELECTIVE_SAVED_OPS:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


@contextlib.contextmanager
def _entered(*contexts):
    with contextlib.ExitStack() as stack:
        for context in contexts:
            stack.enter_context(context)
        yield


class CheckpointSequential(nn.Sequential):
    """An ``nn.Sequential`` whose training forward is split into ``segments`` segments; all
    but the last are checkpointed (non-reentrant ``torch.utils.checkpoint.checkpoint``, the
    split of ``checkpoint_sequential``). With ``policy`` ``"full"`` only segment inputs are
    kept and the rest is recomputed in backward; with ``"selective"`` (PyTorch's selective
    activation checkpointing) the results of :data:`SELECTIVE_SAVED_OPS` are kept too and
    only the cheap operators between them (batch norm, activations, pooling, additions) are
    recomputed; in-place layers (``ReLU(inplace=True)``) then run out of place, since they
    would overwrite a kept result. The recomputation replays the RNG state and leaves
    batch-norm running statistics as the forward left them. Same children, so the same
    state-dict keys."""

    def __init__(self, model: nn.Sequential, segments: int, policy: str = "full"):
        super().__init__(OrderedDict(model.named_children()))
        if not 1 <= segments <= len(self):
            raise ConfigError(
                f"checkpoint: segments must lie in [1, {len(self)}] (the model's number of "
                f"top-level layers), got {segments}"
            )
        if policy not in ("full", "selective"):
            raise ConfigError(f"checkpoint: --policy must be full or selective, got {policy!r}")
        self.segments, self.policy = segments, policy
        if policy == "selective":
            for module in self.modules():
                if getattr(module, "inplace", False):
                    module.inplace = False

    def _contexts(self, chunk: list[nn.Module]):
        """The (forward, recomputation) contexts of a checkpointed segment."""
        if self.policy == "selective":
            forward, recompute = create_selective_checkpoint_contexts(_selective_policy)
            # the statistics are copied outside the recomputation's dispatch mode
            return forward, _entered(_KeepRunningStats(chunk), recompute)
        return contextlib.nullcontext(), _KeepRunningStats(chunk)

    def segment_bounds(self) -> list[tuple[int, int]]:
        """``(start, end)`` (end exclusive) of each segment, as ``checkpoint_sequential``
        splits, except that a segment never starts with an in-place layer (``inplace=True``,
        e.g. ``ReLU(inplace=True)``): it would overwrite the segment input the checkpoint
        keeps, so the boundary moves past it."""
        size = len(self) // self.segments
        cuts = list(range(size, size * self.segments, size))
        layers = list(self)
        for i, cut in enumerate(cuts):
            cut = max(cut, cuts[i - 1] + 1) if i else cut
            while cut < len(self) and getattr(layers[cut], "inplace", False):
                cut += 1
            cuts[i] = cut
        edges = [0, *[c for c in cuts if c < len(self)], len(self)]
        return list(zip(edges[:-1], edges[1:], strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Checkpointed in training with gradients enabled; plain otherwise."""
        if not (self.training and torch.is_grad_enabled()):
            return super().forward(x)
        layers = list(self)
        bounds = self.segment_bounds()
        for start, end in bounds[:-1]:
            chunk = layers[start:end]
            x = checkpoint(
                _run_layers(chunk),
                x,
                use_reentrant=False,
                context_fn=lambda chunk=chunk: self._contexts(chunk),
            )
        start, end = bounds[-1]
        return _run_layers(layers[start:end])(x)


def _run_layers(layers: list[nn.Module]):
    def run(x):
        for layer in layers:
            x = layer(x)
        return x

    return run


def default_segments(num_layers: int) -> int:
    """The usual choice: the square root of the number of layers, rounded (at least 1)."""
    return max(1, round(math.sqrt(num_layers)))


@register_method
class Checkpoint(Method):
    """Activation checkpointing of a sequential model."""

    name = "checkpoint"
    user_model = "any module"
    description = "activation checkpointing (non-reentrant, sqrt(layers) segments by default)"

    @dataclass
    class Options:
        segments: int = field(
            default=0, metadata={"help": "number of segments; 0: sqrt of the number of layers"}
        )
        policy: Literal["full", "selective"] = field(
            default="full",
            metadata={
                "help": "full: recompute each checkpointed segment whole; selective: PyTorch's "
                "selective activation checkpointing (convolution and matrix-product results "
                "kept, the cheap operators between them recomputed)"
            },
        )

        def validate(self) -> None:
            """Segments must not be negative."""
            if self.segments < 0:
                raise ConfigError(f"--segments must be >= 0, got {self.segments}")

    def build_model(self, ctx: RunContext) -> nn.Module:
        """The configured model, checkpointed; it must be an ``nn.Sequential``."""
        model = super().build_model(ctx)
        return checkpointed(model, self.options.segments, self.options.policy)


def checkpointed(model: nn.Module, segments: int = 0, policy: str = "full") -> CheckpointSequential:
    """``model`` (an ``nn.Sequential``) as a :class:`CheckpointSequential` sharing its layers;
    ``segments`` 0 picks :func:`default_segments`; ``policy`` ``"full"`` or ``"selective"``."""
    if not isinstance(model, nn.Sequential):
        raise ConfigError(
            f"checkpoint needs an nn.Sequential model; {type(model).__name__} is not one. "
            "Pick a baseline model (mlp, cnn4, vgg*, resnet*)"
        )
    return CheckpointSequential(model, segments or default_segments(len(model)), policy)


class Offloaded:
    """Forward hooks that run a module's training forward inside
    ``torch.autograd.graph.save_on_cpu``: tensors saved for backward are copied to CPU memory
    and copied back in backward."""

    def __init__(self, model: nn.Module):
        self.contexts: list[Any] = []
        self.pin = torch.cuda.is_available()
        model.register_forward_pre_hook(self._enter)
        model.register_forward_hook(self._exit, always_call=True)

    def _enter(self, module, args):
        context = None
        if module.training and torch.is_grad_enabled():
            context = torch.autograd.graph.save_on_cpu(pin_memory=self.pin)
            context.__enter__()
        self.contexts.append(context)

    def _exit(self, module, args, output):
        context = self.contexts.pop()
        if context is not None:
            context.__exit__(None, None, None)


OFFLOAD_CPU_NOTE = (
    "offload copies saved tensors to CPU memory; the model runs on the CPU, so it saves "
    "nothing here (the copies are charged as saved activations)"
)


@register_method
class Offload(Method):
    """Saved tensors moved to host memory during the forward pass."""

    name = "offload"
    user_model = "any module"
    description = "saved activations moved to CPU memory (save_on_cpu); saves nothing on a CPU"

    def build_model(self, ctx: RunContext) -> nn.Module:
        """The configured model with its forward wrapped in ``save_on_cpu``."""
        model = super().build_model(ctx)
        Offloaded(model)
        return model

    def measure_memory(self, ctx: RunContext, trainer) -> dict[str, Any]:
        """The meter's report, with a note when the device is the CPU."""
        report = super().measure_memory(ctx, trainer)
        if not str(ctx.device).startswith("cuda"):
            report["note"] = OFFLOAD_CPU_NOTE
        return report


class AccumulatingTrainer(Trainer):
    """A :class:`Trainer` whose step splits each batch into ``micro_batches`` parts, runs
    forward and backward on each in turn (gradients add up in ``.grad``) and steps the
    optimizer once: the activations of one part are alive at a time, and in training the
    parts are loaded one at a time too (:meth:`BatchLoader.micro_batches`; a stream's batch
    is read whole). The loss of each part is weighted by its share of the batch, so a
    batch-mean loss gives the full batch's gradient (batch-norm statistics are those of each
    part). An optimizer that re-evaluates the batch (a closure, P-BFGS) is refused."""

    def __init__(self, *args, micro_batches: int = 2, **kwargs):
        super().__init__(*args, **kwargs)
        if getattr(self.optimizer, "needs_closure", False):
            raise ConfigError(
                f"accumulate: {type(self.optimizer).__name__} re-evaluates each batch (a "
                "closure), which micro-batches loaded one at a time cannot give; use an "
                "optimizer without a closure (sgd, adamw)"
            )
        self.micro_batches = micro_batches

    def forward_backward_step(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and gradients of a batch already in memory, one micro-batch at a time; returns
        detached (batch loss, output)."""
        parts = self.micro_batches
        return self._accumulate(
            zip(x.tensor_split(parts), y.tensor_split(parts), strict=True), len(x)
        )

    def train_batches(
        self, epoch: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """One optimizer step per batch of epoch ``epoch``, its micro-batches loaded and moved
        to the device one at a time; yields each batch's detached ``(loss, output, targets)``."""
        for samples, parts in self.loader().micro_batches(epoch, self.micro_batches):
            targets: list[torch.Tensor] = []
            loss, output = self.optimizer_step(
                lambda parts=parts, samples=samples, targets=targets: self._accumulate(
                    self._on_device(parts, targets), samples
                )
            )
            yield loss, output, torch.cat(targets)

    def _on_device(
        self, parts: Iterable[tuple[torch.Tensor, torch.Tensor]], targets: list[torch.Tensor]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in parts:
            y = y.to(self.device, non_blocking=True)
            targets.append(y)
            yield x.to(self.device, non_blocking=True), y

    def _accumulate(
        self, parts: Iterable[tuple[torch.Tensor, torch.Tensor]], samples: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        total, outputs = torch.zeros((), device=self.device), []
        for xs, ys in parts:
            if len(xs) == 0:
                continue
            output = self.model(xs)
            loss = self.loss_fn(output, ys) * (len(xs) / samples)
            loss.backward()
            total = total + loss.detach()
            outputs.append(output.detach())
            del xs, ys  # this step's references, before the next part is loaded
        return total, torch.cat(outputs)


def accumulated(report: MemoryReport, batch: int, *, whole_batch_loaded: bool) -> MemoryReport:
    """The report of one micro-batch step turned into the accumulated step of ``batch``
    samples: from the second micro-batch on the gradients of the earlier ones are alive
    throughout (the peak is the largest live total of the micro-step with every gradient
    present); with ``whole_batch_loaded`` (a stream, whose batch is read whole) the other
    micro-batches' inputs are held too. Its ``batch`` is ``batch``: the report describes
    training on the whole batch."""
    live = report.timeline["live"]
    held = report.inputs * (batch / report.batch - 1) if whole_batch_loaded else 0
    totals = [
        t - g + report.gradients for t, g in zip(live["total"], live["gradients"], strict=True)
    ]
    index = max(range(len(totals)), key=totals.__getitem__)
    breakdown = {c: live[c][index] for c in live if c != "total"}
    breakdown["gradients"] = report.gradients
    breakdown["inputs"] = int(breakdown["inputs"] + held)
    return dataclasses.replace(
        report,
        batch=batch,
        inputs=int(report.inputs + held),
        peak=max(report.peak, totals[index]) + int(held),
        peak_breakdown=breakdown,
    )


class _Accumulating:
    """Gradient accumulation over ``options.micro_batches``, mixed in before a method (its
    model, loss, optimizer and callbacks are kept; only the trainer's step and the memory
    figures change)."""

    def check_run(self, ctx: RunContext) -> None:
        """Refuse more micro-batches than samples in a batch (and what the method refuses)."""
        super().check_run(ctx)
        if self.options.micro_batches > ctx.config.batch_size:
            raise ConfigError(
                f"accumulate: --micro-batches {self.options.micro_batches} exceeds --batch-size "
                f"{ctx.config.batch_size}; give at most {ctx.config.batch_size}"
            )

    def make_trainer(self, ctx: RunContext, model: nn.Module) -> Trainer:
        """An :class:`AccumulatingTrainer` with the method's loss, optimizer and callbacks."""
        return super().make_trainer(
            ctx, model, AccumulatingTrainer, micro_batches=self.options.micro_batches
        )

    def step_memory(self, ctx: RunContext, *, fake: bool = False) -> MemoryReport:
        """One micro-batch step (``ceil(batch / micro_batches)`` samples) of the method with
        every gradient held, as from the second micro-batch on (see :func:`accumulated`);
        ``report.stage`` names the micro-batch."""
        self.check_run(ctx)
        batch = ctx.config.batch_size
        micro = -(-batch // self.options.micro_batches)
        inner = dataclasses.replace(ctx, config=dataclasses.replace(ctx.config, batch_size=micro))
        report = super().step_memory(inner, fake=fake)
        if self.options.micro_batches == 1:
            return report
        report = accumulated(report, batch, whole_batch_loaded=whole_batch_on_device(ctx))
        report.stage = f"micro-batch of {micro}"
        return report

    def measure_memory(self, ctx: RunContext, trainer: Trainer) -> dict[str, Any]:
        """The meter's report of one micro-batch step of the trained model with every
        gradient held (see :func:`accumulated`), as :meth:`step_memory` estimates it."""
        from smallfoot.memory import measure

        batch = ctx.config.batch_size
        micro = -(-batch // self.options.micro_batches)
        x, y = example_batch(ctx.train_set, micro, ctx.device)
        report = measure(
            trainer.model, (x, y), loss_fn=trainer.loss_fn, optimizer=trainer.optimizer
        )
        if self.options.micro_batches > 1:
            report = accumulated(report, batch, whole_batch_loaded=whole_batch_on_device(ctx))
            report.stage = f"micro-batch of {micro}"
        return report.to_dict()


def whole_batch_on_device(ctx: RunContext) -> bool:
    """Whether a step holds the whole batch's inputs in the device's memory: a stream's batch
    is read whole, into the memory of the CPU (on a GPU only its micro-batches move over)."""
    return isinstance(ctx.train_set, StreamDataset) and not str(ctx.device).startswith("cuda")


@register_method
class Accumulate(_Accumulating, Method):
    """Gradient accumulation over micro-batches; ``accumulate+M`` accumulates method M."""

    name = "accumulate"
    user_model = "any module"
    description = "gradient accumulation: each batch in --micro-batches parts, one optimizer step"

    @dataclass
    class Options:
        micro_batches: int = field(
            default=2, metadata={"help": "parts each batch is split into (forward/backward each)"}
        )

        def validate(self) -> None:
            """At least one micro-batch."""
            if self.micro_batches < 1:
                raise ConfigError(f"--micro-batches must be >= 1, got {self.micro_batches}")

    @classmethod
    def compose(cls, other: type[Method]) -> type[Method] | None:
        """``accumulate+M``: method M (its model, loss, optimizer, callbacks) trained with
        accumulation. Refused for staged methods and methods with their own trainer."""
        if other is cls:
            return None
        if other.staged or other.make_trainer is not Method.make_trainer:
            raise ConfigError(
                f"--method accumulate+{other.name}: {other.name} trains with its own loop or "
                "trainer, which accumulation cannot split; use one of them"
            )
        options = composed_options(cls, other)
        return type(
            f"Accumulate{other.__name__}",
            (_Accumulating, other),
            {
                "name": f"accumulate+{other.name}",
                "description": f"{other.name} with gradient accumulation over micro-batches",
                "Options": options,
                "__doc__": f"{other.__name__} trained with gradient accumulation.",
            },
        )
