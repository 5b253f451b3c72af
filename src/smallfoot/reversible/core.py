"""Reversible blocks and the memory-free backward engine (RevNet, i-RevNet, layer-wise, hybrid).

A :class:`RevBlock` splits its input channel-wise into ``(x1, x2)`` and computes the additive
coupling ``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)``, which inverts exactly as
``x2 = y2 - G(y1)``, ``x1 = y1 - F(x2)``. :class:`RevSequence` runs a chain of invertible
modules (RevBlocks, the layer-wise invertible layers of :mod:`smallfoot.reversible.layers`)
through :class:`_InvertibleChainFunction`, a ``torch.autograd.Function`` that keeps only the
chain's output. Its backward walks the chain in reverse; for each module it reconstructs the
module's input from its output and back-propagates through a local recomputation:

- block-wise (RevNet, ``RevBlock(layerwise=False)``): reconstruct the block input, then
  recompute the whole block with autograd, so its hidden activations are live together for
  the length of that block's backward (the paper's local bottleneck);
- layer-wise (a layer of the chain, or ``RevBlock(layerwise=True)``, the paper's hybrid):
  F and G are chains of invertible layers; after the block inverse, their hidden activations
  are reconstructed one layer at a time by the layers' own inverses while the gradient flows,
  so at most one layer's input is live at once.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from smallfoot.errors import InvertibilityError, ShapeError
from smallfoot.reversible.layers import InvertibleBatchNorm2d, replaying_batch_stats

RngState = tuple[torch.Tensor, torch.Tensor | None]


def _is_invertible(module: nn.Module) -> bool:
    return bool(getattr(module, "invertible", False)) and callable(getattr(module, "inverse", None))


class RevBlock(nn.Module):
    """Additive coupling ``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)`` on an ``(N, 2C, H, W)`` input.

    ``f`` and ``g`` map ``(N, C, H, W)`` to the same shape. Both halves keep their shape, so
    the block is invertible by :meth:`inverse` whatever ``f`` and ``g`` are. With
    ``layerwise=True`` (the hybrid design, section 4.2) ``f`` and ``g`` must themselves be
    invertible (e.g. an :class:`~smallfoot.reversible.InvertibleSequential`), and the backward
    pass reconstructs their hidden activations layer by layer instead of recomputing them.
    """

    invertible = True

    def __init__(self, f: nn.Module, g: nn.Module, layerwise: bool = False):
        super().__init__()
        if layerwise and not (_is_invertible(f) and _is_invertible(g)):
            raise InvertibilityError(
                "RevBlock(layerwise=True) needs invertible F and G (InvertibleSequential of "
                f"invertible layers), got {type(f).__name__} and {type(g).__name__}; use "
                "layerwise=False for arbitrary F and G"
            )
        self.f = f
        self.g = g
        self.layerwise = layerwise

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() < 2 or x.shape[1] % 2:
            raise ShapeError(
                f"RevBlock needs an even channel count on dim 1, got shape {tuple(x.shape)}; "
                "give the chain an even number of channels"
            )
        return x.chunk(2, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 2C, ...) -> (N, 2C, ...)``."""
        x1, x2 = self._split(x)
        y1 = x1 + self.f(x2)
        return torch.cat([y1, x2 + self.g(y1)], dim=1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """The input that :meth:`forward` maps to ``y`` (same shape)."""
        y1, y2 = self._split(y)
        x2 = y2 - self.g(y1)
        x1 = y1 - self.f(x2)
        return torch.cat([x1, x2], dim=1)

    def record_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[RngState, RngState]]:
        """Forward, also returning the RNG states before F and before G (replayed in backward)."""
        x1, x2 = self._split(x)
        state_f = _rng_state(x.device)
        y1 = x1 + self.f(x2)
        state_g = _rng_state(x.device)
        y2 = x2 + self.g(y1)
        return torch.cat([y1, y2], dim=1), (state_f, state_g)

    def backward_from_output(self, y, grad_y, state, known_input=None):
        """Reconstruct the input from ``y`` and back-propagate ``grad_y`` through the block.

        Block-wise (RevNet): ``G(y1)`` and then ``F(x2)`` are evaluated once each with
        autograd, which both inverts the block and builds the graphs the gradients need (one
        extra forward pass; only one branch's hidden activations are live at a time). Hybrid:
        the inverse runs without a graph and F and G are back-propagated layer by layer.
        Returns ``(x, grad_x, [(parameter, gradient), ...])``; buffers (BN running statistics)
        are left as they were and the RNG states of ``state`` are replayed.
        """
        state_f, state_g = state if state is not None else (None, None)
        device = y.device
        y1, y2 = self._split(y)
        grad_y1, grad_y2 = self._split(grad_y)
        known = self._split(known_input) if known_input is not None else None
        with _buffers_restored(self):
            if self.layerwise:
                kept_g = kept_f = None
                if known:
                    x1, x2 = known
                else:
                    g_out, kept_g = _branch_forward_keeping_last(self.g, y1)
                    x2 = y2 - g_out
                    f_out, kept_f = _branch_forward_keeping_last(self.f, x2)
                    x1 = y1 - f_out
                grad_y1_from_g, grads_g = _layerwise_backward(self.g, y2 - x2, grad_y2, y1, kept_g)
                grad_y1 = grad_y1 + grad_y1_from_g
                grad_x2_from_f, grads_f = _layerwise_backward(self.f, y1 - x1, grad_y1, x2, kept_f)
                grad_x = torch.cat([grad_y1, grad_y2 + grad_x2_from_f], dim=1)
                return torch.cat([x1, x2], dim=1), grad_x, grads_f + grads_g
            grad_y1_from_g, grads_g, g_out = _branch_backward(self.g, y1, grad_y2, state_g, device)
            x2 = known[1] if known else y2 - g_out
            grad_y1 = grad_y1 + grad_y1_from_g
            grad_x2_from_f, grads_f, f_out = _branch_backward(self.f, x2, grad_y1, state_f, device)
            x1 = known[0] if known else y1 - f_out
        grad_x = torch.cat([grad_y1, grad_y2 + grad_x2_from_f], dim=1)
        return torch.cat([x1, x2], dim=1), grad_x, grads_f + grads_g

    def extra_repr(self) -> str:
        return "layerwise=True" if self.layerwise else ""


class InvertibleConv2d(RevBlock):
    """Invertible convolution (section 4.1.3): a minimal coupling block whose F and G are one
    ``k x k`` convolution each on half the channels. ``(N, C, H, W) -> (N, C, H, W)``, C even."""

    def __init__(self, channels: int, kernel_size: int = 3):
        if channels % 2:
            raise ShapeError(f"InvertibleConv2d needs an even channel count, got {channels}")
        half, pad = channels // 2, kernel_size // 2
        super().__init__(
            nn.Conv2d(half, half, kernel_size, padding=pad, bias=False),
            nn.Conv2d(half, half, kernel_size, padding=pad, bias=False),
        )


def basic_rev_block(channels: int, dropout: float = 0.0) -> RevBlock:
    """A RevBlock whose ``F`` and ``G`` are BN-ReLU-conv3x3 (-dropout) on ``channels // 2`` maps."""
    if channels % 2:
        raise ShapeError(f"a reversible block needs an even channel count, got {channels}")
    half = channels // 2

    def branch() -> nn.Sequential:
        layers = [nn.BatchNorm2d(half), nn.ReLU(), nn.Conv2d(half, half, 3, 1, 1, bias=False)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        return nn.Sequential(*layers)

    return RevBlock(branch(), branch())


def _is_stochastic(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) for m in module.modules())


@contextlib.contextmanager
def _buffers_restored(module: nn.Module):
    """Run the body and put every buffer of ``module`` back as it was (BN running stats are
    updated once, in the forward pass, not again by the backward's recomputation)."""
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _rng_state(device: torch.device) -> RngState:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: RngState | None, device: torch.device) -> None:
    if state is None:
        return
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _record_forward(module: nn.Module, x: torch.Tensor, replay_rng: bool):
    """``(output, state)`` of one chain member; state is what its backward needs to replay
    (``None`` without ``replay_rng``)."""
    if not replay_rng:
        return module(x), None
    if isinstance(module, RevBlock):
        return module.record_forward(x)
    return module(x), _rng_state(x.device)


def _backward_from_output(module, y, grad_y, state, known_input=None):
    """``(x, grad_x, [(param, grad)])`` for one invertible module from its output ``y``: its
    own ``backward_from_output`` when it has one (analytic, no recomputation), else its
    ``inverse`` and a local autograd recomputation."""
    if isinstance(module, RevBlock):
        return module.backward_from_output(y, grad_y, state, known_input)
    if hasattr(module, "backward_from_output"):
        return module.backward_from_output(y, grad_y, known_input)
    params = [p for p in module.parameters() if p.requires_grad]
    with _buffers_restored(module):
        with torch.no_grad():
            x = known_input if known_input is not None else module.inverse(y)
        x = x.detach().requires_grad_()
        with torch.enable_grad():
            _set_rng_state(state, y.device)
            out = module(x)
            grads = torch.autograd.grad(out, [x, *params], grad_y, allow_unused=True)
    return x.detach(), grads[0], list(zip(params, grads[1:], strict=True))


def _branch_backward(branch: nn.Module, x, grad_out, state, device):
    """Evaluate ``branch(x)`` with autograd (replaying ``state``) and back-propagate
    ``grad_out``: returns ``(grad_x, [(param, grad)], output)`` with the output detached."""
    x = x.detach().requires_grad_()
    params = [p for p in branch.parameters() if p.requires_grad]
    with torch.enable_grad():
        _set_rng_state(state, device)
        out = branch(x)
        grads = torch.autograd.grad(out, [x, *params], grad_out, allow_unused=True)
    grad_x = grads[0] if grads[0] is not None else torch.zeros_like(x)
    return grad_x, list(zip(params, grads[1:], strict=True)), out.detach()


def _layers(chain: nn.Module) -> list[nn.Module]:
    return list(chain) if isinstance(chain, nn.Sequential) else [chain]


def _keeps_graph(layer: nn.Module) -> bool:
    """Whether a branch's last layer is run with autograd by the block inverse: a block-wise
    coupling (an invertible conv), whose backward would otherwise evaluate its convolutions
    a second time; never a layer with batch statistics replayed without their gradient."""
    return (
        isinstance(layer, RevBlock)
        and not layer.layerwise
        and not any(isinstance(m, InvertibleBatchNorm2d) for m in layer.modules())
    )


def _branch_forward_keeping_last(chain: nn.Module, x: torch.Tensor):
    """``chain(x)`` for a hybrid block's inverse: ``(output, kept)``. Layers run without a
    graph, invertible BNs with the forward pass's batch statistics; a last layer that
    :func:`_keeps_graph` runs with autograd, and ``kept = (its input, its output)`` lets the
    layer-wise backward use that graph instead of evaluating the layer again (it holds one
    layer's internals, not the branch's). ``kept`` is ``None`` otherwise."""
    layers = _layers(chain)
    last = layers[-1] if _keeps_graph(layers[-1]) else None
    with torch.no_grad(), replaying_batch_stats(chain):
        for layer in layers[:-1] if last is not None else layers:
            x = layer(x)
    if last is None:
        return x, None
    x = x.detach().requires_grad_()
    with torch.enable_grad():
        out = last(x)
    return out.detach(), (x, out)


def _layerwise_backward(chain: nn.Module, output, grad_output, known_input, kept=None):
    """Back-propagate through the layers of an invertible ``chain`` from its ``output``,
    reconstructing each layer's input with that layer's inverse (the first layer's input is
    ``known_input``; ``kept``, from :func:`_branch_forward_keeping_last`, gives the last
    layer's input and graph). Returns ``(grad_input, [(param, grad)])``."""
    layers = _layers(chain)
    y, grad, param_grads = output, grad_output, []
    if kept is not None:
        x, out = kept
        params = [p for p in layers[-1].parameters() if p.requires_grad]
        grads = torch.autograd.grad(out, [x, *params], grad, allow_unused=True)
        param_grads = list(zip(params, grads[1:], strict=True))
        y, grad, layers = x.detach(), grads[0], layers[:-1]
        if not layers:
            return grad, param_grads
    for index in range(len(layers) - 1, -1, -1):
        known = known_input if index == 0 else None
        y, grad, grads = _backward_from_output(layers[index], y, grad, None, known)
        param_grads = grads + param_grads
    return grad, param_grads


class _InvertibleChainFunction(torch.autograd.Function):
    """Forward through ``modules`` without a graph; backward by inversion and local recompute.

    Inputs: ``(x, modules, *params)``; ``params`` are all trainable parameters of ``modules``
    (passed so autograd routes their gradients here). Only the chain output is saved.
    """

    @staticmethod
    def forward(ctx, x, modules, replay_rng, *params):
        ctx.modules = modules
        ctx.replay_rng = replay_rng
        ctx.params = params
        ctx.device = x.device
        ctx.states = []
        with torch.no_grad():
            for module in modules:
                x, state = _record_forward(module, x, replay_rng)
                ctx.states.append(state)
        ctx.save_for_backward(x)
        ctx.used = False
        return x

    @staticmethod
    def backward(ctx, grad_y):
        if ctx.used:
            raise InvertibilityError(
                "backward through a reversible chain ran twice; its graph keeps no activations "
                "(retain_graph=True cannot help). Run the forward pass again before a second backward"
            )
        ctx.used = True
        (y,) = ctx.saved_tensors
        y = y.detach()
        devices = [ctx.device] if ctx.device.type == "cuda" else []
        grads_by_param: dict[int, torch.Tensor] = {}
        rng_kept = (
            torch.random.fork_rng(devices=devices) if ctx.replay_rng else contextlib.nullcontext()
        )
        with rng_kept:
            for module, state in zip(reversed(ctx.modules), reversed(ctx.states), strict=True):
                y, grad_y, param_grads = _backward_from_output(module, y, grad_y, state)
                for param, grad in param_grads:
                    if grad is None:
                        continue
                    previous = grads_by_param.get(id(param))
                    grads_by_param[id(param)] = grad if previous is None else previous + grad
        return (grad_y, None, None, *(grads_by_param.get(id(p)) for p in ctx.params))


def _apply_chain_eagerly(x: torch.Tensor, modules: tuple[nn.Module, ...], *params):
    """The replaying chain, kept out of ``torch.compile`` (a graph break).

    The backward replays each recorded RNG state through eager kernels, so the forward must
    draw its dropout masks from the same eager generator. Compiled, Inductor draws its own
    masks (a Philox stream seeded once per graph), the backward cannot reproduce them, and the
    gradients are silently wrong. Recording the masks instead would keep an activation-sized
    tensor per dropout layer, the memory the chain exists to save; running the chain eagerly
    costs only the fusion inside it (the layers around it still compile).
    """
    global _eager_chain
    if _eager_chain is None:
        # made on first use: torch.compiler.disable imports Dynamo, seconds that importing
        # smallfoot should not cost
        _eager_chain = torch.compiler.disable(_InvertibleChainFunction.apply)
    return _eager_chain(x, modules, True, *params)


_eager_chain = None


class RevSequence(nn.Module):
    """A chain of invertible modules trained with the memory-free backward.

    Members are :class:`RevBlock` s (block-wise or hybrid) and layer-wise invertible layers
    (:class:`InvertibleConv2d`, :class:`~smallfoot.reversible.InvertibleBatchNorm2d`,
    :class:`~smallfoot.reversible.InvertibleLeakyReLU`, channel/batch pooling): anything with
    ``invertible = True`` and an exact ``inverse``. With ``memory_free=False`` it is a plain
    ``nn.Sequential`` forward (autograd keeps every activation), for parity checks.

    ``replay_rng`` records the RNG state before each member in forward and replays it in the
    backward's recomputation (inside ``torch.random.fork_rng``, so the global RNG is left
    alone). ``None`` turns it on when the chain contains an ``nn.Dropout*`` layer; set it to
    ``True`` for other random layers. Without it the chain compiles with
    ``torch.compile(fullgraph=True)`` once ``torch._dynamo.config.trace_autograd_ops = True``
    is set (the backward calls ``torch.autograd.grad``, which Dynamo traces only with that
    switch). Under ``torch.compile`` a replaying chain runs eagerly in a graph break (see
    :func:`_apply_chain_eagerly`), so it raises under ``fullgraph=True``.
    """

    invertible = True

    def __init__(self, modules, memory_free: bool = True, replay_rng: bool | None = None):
        super().__init__()
        modules = list(modules)
        for index, module in enumerate(modules):
            if not _is_invertible(module):
                raise InvertibilityError(
                    f"module {index} of the reversible chain is a {type(module).__name__}, which "
                    "has no exact inverse; wrap it as RevBlock(f, g), use an invertible layer, "
                    "or put it outside the chain"
                )
        self.blocks = nn.ModuleList(modules)
        self.memory_free = memory_free
        self.replay_rng = _is_stochastic(self.blocks) if replay_rng is None else replay_rng

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the chain; the output shape depends on the pooling layers in it."""
        params = [p for p in self.blocks.parameters() if p.requires_grad]
        if self.memory_free and torch.is_grad_enabled() and (x.requires_grad or params):
            if self.replay_rng:
                return _apply_chain_eagerly(x, tuple(self.blocks), *params)
            return _InvertibleChainFunction.apply(x, tuple(self.blocks), False, *params)
        for block in self.blocks:
            x = block(x)
        return x

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """The input that :meth:`forward` maps to ``y``."""
        for block in reversed(self.blocks):
            y = block.inverse(y)
        return y
