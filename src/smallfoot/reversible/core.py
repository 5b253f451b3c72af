"""Reversible residual blocks and the memory-free backward engine (RevNet, Gomez et al. 2017).

A :class:`RevBlock` splits its input channel-wise into ``(x1, x2)`` and computes the additive
coupling ``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)``, which inverts exactly as
``x2 = y2 - G(y1)``, ``x1 = y1 - F(x2)``. :class:`RevSequence` runs a chain of such blocks
through :class:`_RevSequenceFunction`, a ``torch.autograd.Function`` that keeps only the
chain's output: the backward pass reconstructs every block input from its output and
recomputes the block locally, so saved activations do not grow with depth.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from smallfoot.errors import InvertibilityError, ShapeError


class RevBlock(nn.Module):
    """Additive coupling ``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)`` on an ``(N, 2C, H, W)`` input.

    ``f`` and ``g`` map ``(N, C, H, W)`` to the same shape. Both halves keep their shape, so
    the block is invertible by :meth:`inverse` whatever ``f`` and ``g`` are.
    """

    invertible = True

    def __init__(self, f: nn.Module, g: nn.Module):
        super().__init__()
        self.f = f
        self.g = g

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
        y2 = x2 + self.g(y1)
        return torch.cat([y1, y2], dim=1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """The input that :meth:`forward` maps to ``y`` (same shape)."""
        y1, y2 = self._split(y)
        x2 = y2 - self.g(y1)
        x1 = y1 - self.f(x2)
        return torch.cat([x1, x2], dim=1)


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


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device):
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


class _RevSequenceFunction(torch.autograd.Function):
    """Forward through ``blocks`` without a graph; backward by inversion and local recompute.

    Inputs: ``(x, blocks, *params)``; ``params`` are all parameters of ``blocks`` (passed so
    autograd routes their gradients here). Only the chain output is saved.
    """

    @staticmethod
    def forward(ctx, x, blocks, *params):
        ctx.blocks = blocks
        ctx.device = x.device
        ctx.rng = []
        with torch.no_grad():
            for block in blocks:
                x1, x2 = block._split(x)
                state_f = _rng_state(x.device)
                y1 = x1 + block.f(x2)
                state_g = _rng_state(x.device)
                y2 = x2 + block.g(y1)
                ctx.rng.append((state_f, state_g))
                x = torch.cat([y1, y2], dim=1)
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
        param_grads: list[torch.Tensor | None] = []
        with torch.random.fork_rng(devices=devices):
            for block, (state_f, state_g) in zip(
                reversed(ctx.blocks), reversed(ctx.rng), strict=True
            ):
                with _buffers_restored(block):
                    y1, y2 = y.chunk(2, dim=1)
                    with torch.no_grad():
                        _set_rng_state(state_g, ctx.device)
                        x2 = y2 - block.g(y1)
                        _set_rng_state(state_f, ctx.device)
                        x1 = y1 - block.f(x2)
                    x1 = x1.requires_grad_()
                    x2 = x2.requires_grad_()
                    with torch.enable_grad():
                        _set_rng_state(state_f, ctx.device)
                        z1 = x1 + block.f(x2)
                        _set_rng_state(state_g, ctx.device)
                        z2 = x2 + block.g(z1)
                        out = torch.cat([z1, z2], dim=1)
                        params = [p for p in block.parameters() if p.requires_grad]
                        grads = torch.autograd.grad(
                            out, [x1, x2, *params], grad_y, allow_unused=True
                        )
                grad_y = torch.cat([grads[0], grads[1]], dim=1)
                param_grads = list(grads[2:]) + param_grads
                y = torch.cat([x1.detach(), x2.detach()], dim=1)
        return (grad_y, None, *param_grads)


class RevSequence(nn.Module):
    """A chain of :class:`RevBlock` s trained with the memory-free backward.

    ``(N, 2C, H, W) -> (N, 2C, H, W)``. With ``memory_free=False`` it is a plain
    ``nn.Sequential`` forward (autograd keeps every activation), for parity checks.
    """

    invertible = True

    def __init__(self, blocks, memory_free: bool = True):
        super().__init__()
        blocks = list(blocks)
        for index, block in enumerate(blocks):
            if not isinstance(block, RevBlock):
                raise InvertibilityError(
                    f"block {index} of the reversible chain is a {type(block).__name__}, which "
                    "has no exact inverse; wrap it as RevBlock(f, g) or put it outside the chain"
                )
        self.blocks = nn.ModuleList(blocks)
        self.memory_free = memory_free

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 2C, ...) -> (N, 2C, ...)``."""
        params = [p for p in self.blocks.parameters() if p.requires_grad]
        if self.memory_free and torch.is_grad_enabled() and (x.requires_grad or params):
            return _RevSequenceFunction.apply(x, tuple(self.blocks), *params)
        for block in self.blocks:
            x = block(x)
        return x

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """The input that :meth:`forward` maps to ``y``."""
        for block in reversed(self.blocks):
            y = block.inverse(y)
        return y
