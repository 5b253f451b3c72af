"""Test helpers for custom backward passes and invertible modules."""

from __future__ import annotations

import torch
from torch import nn

from smallfoot.errors import InvertibilityError


def check_grad_parity(
    module_a: nn.Module,
    module_b: nn.Module,
    inputs: torch.Tensor,
    atol: float = 1e-10,
    grad_output: torch.Tensor | None = None,
) -> float:
    """Run forward+backward of two modules with identical parameters on ``inputs`` and
    compare outputs, input gradients, parameter gradients and buffers (by name).

    Both runs start from the same RNG state (the CPU generator and those of the CUDA devices
    that ``inputs`` and the parameters live on), so stochastic layers such as dropout draw
    the same masks in both; the global RNG state is left as it was. ``grad_output`` (same
    shape as the output) defaults to a seeded random tensor. Returns the largest absolute
    difference seen; raises ``AssertionError`` if it exceeds ``atol``.
    """
    devices = _cuda_devices([inputs, *module_a.parameters(), *module_b.parameters()])
    with torch.random.fork_rng(devices=devices):
        start = torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]
        results = []
        for module in (module_a, module_b):
            torch.set_rng_state(start[0])
            for device, state in zip(devices, start[1], strict=True):
                torch.cuda.set_rng_state(state, device)
            results.append(_forward_backward(module, inputs, grad_output))
            grad_output = results[-1][4]
    worst = 0.0
    (out_a, gx_a, g_a, b_a, _), (out_b, gx_b, g_b, b_b, _) = results
    pairs = [("output", out_a, out_b), ("input grad", gx_a, gx_b)]
    pairs += [(f"grad {n}", g_a[n], g_b[n]) for n in g_a]
    pairs += [(f"buffer {n}", b_a[n], b_b[n]) for n in b_a]
    for name, a, b in pairs:
        if (a is None) != (b is None):
            raise AssertionError(f"{name}: present in one module only")
        if a is None:
            continue
        diff = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
        if diff > atol:
            raise AssertionError(f"{name} differs by {diff:.3e} (> {atol:.1e})")
        worst = max(worst, diff)
    return worst


def _cuda_devices(tensors) -> list[int]:
    """Indices of the CUDA devices ``tensors`` live on (their generators are replayed too)."""
    devices = {t.device for t in tensors if t.device.type == "cuda"}
    return sorted(torch.cuda.current_device() if d.index is None else d.index for d in devices)


def _forward_backward(module: nn.Module, inputs: torch.Tensor, grad_output):
    """One forward+backward: ``(output, input grad, {name: grad}, {name: buffer}, grad_output)``."""
    module.zero_grad(set_to_none=True)
    x = inputs.detach().clone().requires_grad_()
    out = module(x)
    if grad_output is None:
        generator = torch.Generator().manual_seed(0)
        grad_output = torch.randn(out.shape, generator=generator, dtype=out.dtype)
    out.backward(grad_output.to(out.device))
    grads = {n: p.grad for n, p in module.named_parameters()}
    return out.detach(), x.grad, grads, dict(module.named_buffers()), grad_output


def check_invertible(module: nn.Module, x: torch.Tensor, atol: float = 1e-10) -> float:
    """Check ``module.inverse(module(x)) == x`` (in eval mode, no gradients) and return the
    largest reconstruction error; raises :class:`InvertibilityError` if the module has no
    ``inverse`` and ``AssertionError`` if the error exceeds ``atol``."""
    if not callable(getattr(module, "inverse", None)):
        raise InvertibilityError(
            f"{type(module).__name__} has no inverse(); only modules with an exact inverse "
            "(RevBlock, RevSequence, ChannelPool) can be checked"
        )
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            error = (module.inverse(module(x)) - x).abs().max().item()
    finally:
        module.train(was_training)
    if error > atol:
        raise AssertionError(f"reconstruction error {error:.3e} exceeds {atol:.1e}")
    return error
