"""Facto-CNN layers (Lee, Ko, Hong, *Facto-CNN*, section 3): low-rank training with compressed feature maps.

* :class:`FactoLinear` / :class:`FactoConv2d`: ``W`` is frozen, ``Omega = W + M D`` (eq. 8-10),
  only the magnitude ``M`` trains and backward keeps ``D X`` (optionally mean-pooled) instead
  of ``X``.
* :class:`MaskReLU` / :class:`MaskMaxPool2d`: keep a bit-packed 1-bit mask (section 3.2).
* :class:`PooledScale`: a Fixup scaling layer that keeps a mean-pooled input (section 3.3).
* :class:`CompactBatchNorm2d`: batch norm that keeps its normalised input as int8 (1 byte
  per element instead of the 4 of its float32 input; not in the paper, whose nets have none).

Every layer has a full-rank mode (``low_rank=False``) that is the plain PyTorch layer, used
for the full-rank epochs before low-rank training starts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from smallfoot.errors import ConfigError, ShapeError
from smallfoot.facto._bits import pack_bits, unpack_bits
from smallfoot.models.fixup import Scale


def internal_size(size: int, inr: float) -> int:
    """The internal nodes / channels ``R = round(inr * size)`` (at least 1) for ``size`` inputs."""
    if not 0.0 < inr <= 1.0:
        raise ConfigError(f"inr (R/I) must be in (0, 1], got {inr}; the paper uses 0.2-0.4")
    return max(1, round(inr * size))


def draw_direction(
    rank: int, fan_in: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A direction matrix ``D`` (rank, fan_in), float32 on the CPU (eq. 11-13).

    Gaussian entries, every row normalised to unit length, then scaled by
    ``alpha = (fan_in / rank) ** (1/4)`` so that ``Var[D] = sqrt(1 / (R I))`` and the first
    low-rank updates of ``Omega`` have the variance of full-rank gradients.
    """
    d = torch.randn(rank, fan_in, generator=generator)
    d = d / d.norm(dim=1, keepdim=True)
    return d * (fan_in / rank) ** 0.25


def mean_pool(z: torch.Tensor, kernel: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, ceil(H/k), ceil(W/k)): the mean of each k x k cell (edge cells clipped)."""
    return z if kernel == 1 else F.avg_pool2d(z, kernel, ceil_mode=True)


def sum_pool(g: torch.Tensor, kernel: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, ceil(H/k), ceil(W/k)): the sum of each k x k cell (edge cells clipped)."""
    return F.avg_pool2d(g, kernel, ceil_mode=True, divisor_override=1)


def upsample(z: torch.Tensor, kernel: int, size: tuple[int, int]) -> torch.Tensor:
    """Inverse shape of :func:`mean_pool`: repeat each cell k x k times, crop to ``size`` (H, W)."""
    if kernel == 1:
        return z
    z = z.repeat_interleave(kernel, dim=2).repeat_interleave(kernel, dim=3)
    return z[:, :, : size[0], : size[1]]


def _check_kernel(kernel: int) -> int:
    if int(kernel) != kernel or kernel < 1:
        raise ConfigError(
            f"compression kernel must be a positive integer (1 = no pooling), got {kernel}"
        )
    return int(kernel)


# -- autograd functions -----------------------------------------------------------------------
class FactoLinearFunction(torch.autograd.Function):
    """``y = x Omega^T + b`` with ``Omega = W + M D``; saves ``z = x D^T`` (..., R), not ``x``.

    Backward: ``dL/dx = dL/dy Omega``, ``dL/dM = dL/dy^T z``, ``dL/db = sum dL/dy``; ``W``
    and ``D`` get no gradient.
    """

    @staticmethod
    def forward(ctx, x, weight, magnitude, direction, bias):
        omega = weight + magnitude @ direction  # (O, I)
        ctx.save_for_backward(weight, magnitude, direction, F.linear(x, direction))
        return F.linear(x, omega, bias)

    @staticmethod
    def backward(ctx, grad_y):
        weight, magnitude, direction, z = ctx.saved_tensors
        grad_x = grad_m = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_y @ (weight + magnitude @ direction)
        flat = grad_y.reshape(-1, grad_y.shape[-1])  # (N, O)
        if ctx.needs_input_grad[2]:
            grad_m = flat.T @ z.reshape(-1, z.shape[-1])  # (O, R)
        if ctx.needs_input_grad[4]:
            grad_b = flat.sum(0)
        return grad_x, None, grad_m, None, grad_b


class FactoConv2dFunction(torch.autograd.Function):
    """``Y = Omega * X + b`` (eq. 10) saving ``Z = D_filter * X`` (B, C_R, H', W'), mean-pooled
    with ``kernel`` (FMC, section 3.3) to (B, C_R, ceil(H'/k), ceil(W'/k)).

    Backward: ``dL/dX`` through ``Omega``; ``dL/dM[o, r] = sum_{b,h,w} dL/dY[b,o,h,w] Z~[b,r,h,w]``
    with ``Z~`` the stored ``Z`` upsampled (nearest) back to H' x W', computed as the stored
    ``Z`` against ``dL/dY`` summed over each k x k cell; ``dL/db``. ``W`` and ``D`` get none.
    """

    @staticmethod
    def forward(ctx, x, weight, magnitude, direction, bias, stride, padding, dilation, kernel):
        omega = weight + (magnitude @ direction.flatten(1)).view_as(weight)
        y = F.conv2d(x, omega, bias, stride, padding, dilation)  # (B, C_O, H', W')
        z = F.conv2d(x, direction, None, stride, padding, dilation)  # (B, C_R, H', W')
        ctx.save_for_backward(weight, magnitude, direction, mean_pool(z, kernel))
        ctx.geometry = (x.shape, stride, padding, dilation, kernel)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        weight, magnitude, direction, z = ctx.saved_tensors
        x_shape, stride, padding, dilation, kernel = ctx.geometry
        grad_x = grad_m = grad_b = None
        if ctx.needs_input_grad[0]:
            omega = weight + (magnitude @ direction.flatten(1)).view_as(weight)
            grad_x = torch.nn.grad.conv2d_input(x_shape, omega, grad_y, stride, padding, dilation)
        if ctx.needs_input_grad[2]:
            # sum_{h,w} dY * upsample(Z) = sum_{cells} (dY summed over the cell) * Z: the same
            # numbers as upsampling Z, with k^2 fewer products and no full-size temporary
            grad_cells = grad_y if kernel == 1 else sum_pool(grad_y, kernel)
            grad_m = torch.einsum("bohw,brhw->or", grad_cells, z)
        if ctx.needs_input_grad[4]:
            grad_b = grad_y.sum((0, 2, 3))
        return grad_x, None, grad_m, None, grad_b, None, None, None, None


class MaskReLUFunction(torch.autograd.Function):
    """``relu(x)`` saving ``x > 0`` bit-packed (numel / 8 bytes) instead of the output."""

    @staticmethod
    def forward(ctx, x):
        y = x.clamp_min(0)
        ctx.save_for_backward(pack_bits(y > 0))
        ctx.shape = x.shape
        return y

    @staticmethod
    def backward(ctx, grad_y):
        (packed,) = ctx.saved_tensors
        return torch.where(unpack_bits(packed, ctx.shape), grad_y, 0.0)


class MaskMaxPool2dFunction(torch.autograd.Function):
    """Non-overlapping max pooling saving a bit-packed mask of the input's argmax positions.

    The mask marks, in each window, the element PyTorch's own max pool selects (its
    indices), so gradients equal the standard op's exactly, ties included. Backward
    upsamples the output gradient to the input size and keeps it where the mask is set.
    """

    @staticmethod
    def forward(ctx, x, kernel_size):
        y, indices = F.max_pool2d(x, kernel_size, kernel_size, return_indices=True)
        b, c, h, w = x.shape
        mask = torch.zeros(b * c, h * w, dtype=torch.bool, device=x.device)
        mask.scatter_(1, indices.view(b * c, -1), True)
        ctx.save_for_backward(pack_bits(mask))
        ctx.geometry = (x.shape, kernel_size)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        (packed,) = ctx.saved_tensors
        shape, (kh, kw) = ctx.geometry
        up = grad_y.repeat_interleave(kh, dim=2).repeat_interleave(kw, dim=3)
        # floor mode leaves the last rows/columns outside every window: pad them with zeros
        up = F.pad(up, (0, shape[3] - up.shape[3], 0, shape[2] - up.shape[2]))
        return torch.where(unpack_bits(packed, shape), up, 0.0), None


def _window_origins(out_size, stride, padding, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Top rows (H', 1) and left columns (1, W') of every pooling window in input coordinates."""
    top = torch.arange(out_size[0], device=device) * stride[0] - padding[0]
    left = torch.arange(out_size[1], device=device) * stride[1] - padding[1]
    return top.view(-1, 1), left.view(1, -1)


class OffsetMaxPool2dFunction(torch.autograd.Function):
    """Max pooling with any windows (overlapping, padded) saving, per output element, the
    position of the maximum inside its window as one ``uint8`` (windows of up to 256
    elements) instead of the input plus int64 indices.

    Backward rebuilds PyTorch's own indices from the offsets and scatter-adds the output
    gradient, as the standard op does.
    """

    @staticmethod
    def forward(ctx, x, kernel, stride, padding, dilation, ceil_mode):
        y, indices = F.max_pool2d(
            x, kernel, stride, padding, dilation, ceil_mode, return_indices=True
        )
        width = x.shape[-1]
        top, left = _window_origins(y.shape[-2:], stride, padding, x.device)
        rows = (indices // width - top) // dilation[0]
        cols = (indices % width - left) // dilation[1]
        ctx.save_for_backward((rows * kernel[1] + cols).to(torch.uint8))
        ctx.geometry = (x.shape, kernel, stride, padding, dilation)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        (offsets,) = ctx.saved_tensors
        shape, kernel, stride, padding, dilation = ctx.geometry
        b, c, h, w = shape
        offsets = offsets.long()
        top, left = _window_origins(grad_y.shape[-2:], stride, padding, grad_y.device)
        rows = top + offsets // kernel[1] * dilation[0]
        cols = left + offsets % kernel[1] * dilation[1]
        indices = (rows * w + cols).view(b * c, -1)
        grad_x = grad_y.new_zeros(b * c, h * w)
        grad_x.scatter_add_(1, indices, grad_y.reshape(b * c, -1))
        return grad_x.view(shape), None, None, None, None, None


class PooledScaleFunction(torch.autograd.Function):
    """``y = x * s`` (s a 1-element tensor) saving ``x`` mean-pooled with ``kernel``.

    ``dL/dx = s dL/dy`` exactly; ``dL/ds = sum(dL/dy * upsample(pool(x)))``, exact for k = 1.
    """

    @staticmethod
    def forward(ctx, x, scale, kernel):
        ctx.save_for_backward(scale, mean_pool(x, kernel))
        ctx.geometry = (kernel, tuple(x.shape[-2:]))
        return x * scale

    @staticmethod
    def backward(ctx, grad_y):
        scale, pooled = ctx.saved_tensors
        kernel, size = ctx.geometry
        grad_x = grad_y * scale if ctx.needs_input_grad[0] else None
        grad_s = None
        if ctx.needs_input_grad[1]:
            grad_s = (grad_y * upsample(pooled, kernel, size)).sum().reshape(1)
        return grad_x, grad_s, None


def quantize_per_channel(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)``: (B, C, ...) -> int8 ``q`` of the same shape and ``scale`` (C,) with
    ``z ~ q * scale``, ``scale = max |z| / 127`` over each channel (error <= scale / 2)."""
    dims = [0, *range(2, z.dim())]
    scale = z.abs().amax(dims).clamp_min(torch.finfo(z.dtype).tiny) / 127
    view = (1, -1) + (1,) * (z.dim() - 2)
    return (z / scale.view(view)).round_().to(torch.int8), scale


class CompactBatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm ``y = weight * x_hat + bias``, ``x_hat = (x - mean) * invstd``
    over (B, H, W) per channel, that saves ``x_hat`` quantised to int8 per channel
    (:func:`quantize_per_channel`) instead of ``x``; ``quantize=False`` saves ``x_hat`` as
    is (exact, no saving; for checks).

    Forward updates ``running_mean`` / ``running_var`` (when given) once, with
    ``momentum``, as ``nn.BatchNorm2d`` does. Backward, with ``N = B H W`` and ``x_hat``
    dequantised: ``dL/dbias = sum dL/dy``, ``dL/dweight = sum dL/dy x_hat``, ``dL/dx =
    weight invstd (dL/dy - dL/dbias / N - x_hat dL/dweight / N)``, autograd's formula, so
    only the quantisation of ``x_hat`` separates the gradients from autograd's.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, quantize):
        y, mean, invstd = torch.native_batch_norm(
            x, weight, bias, running_mean, running_var, True, momentum, eps
        )
        view = (1, -1) + (1,) * (x.dim() - 2)
        x_hat = (x - mean.view(view)).mul_(invstd.view(view))  # (B, C, H, W)
        if quantize:
            q, scale = quantize_per_channel(x_hat)
            ctx.save_for_backward(weight, invstd, q, scale)
        else:
            ctx.save_for_backward(weight, invstd, x_hat, None)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        weight, invstd, saved, scale = ctx.saved_tensors
        view = (1, -1) + (1,) * (grad_y.dim() - 2)
        # a fresh full-size tensor, turned into dL/dx in place: one temporary besides grad_y
        if scale is not None:
            x_hat = saved.to(grad_y.dtype).mul_(scale.view(view))
        else:
            x_hat = saved.clone()
        dims = [0, *range(2, grad_y.dim())]
        count = grad_y.numel() // grad_y.shape[1]
        grad_bias = grad_y.sum(dims)  # (C,)
        grad_weight = (grad_y * x_hat).sum(dims)  # (C,)
        grad_x = None
        if ctx.needs_input_grad[0]:
            gain = invstd if weight is None else weight * invstd
            grad_x = x_hat.mul_((-grad_weight / count).view(view)).add_(grad_y)
            grad_x.sub_((grad_bias / count).view(view)).mul_(gain.view(view))
        return (
            grad_x,
            grad_weight if ctx.needs_input_grad[1] else None,
            grad_bias if ctx.needs_input_grad[2] else None,
            None,
            None,
            None,
            None,
            None,
        )


# -- modules --------------------------------------------------------------------------------
class _Factorized:
    """Merge / redraw / mode switching shared by :class:`FactoLinear` and :class:`FactoConv2d`."""

    rank: int
    low_rank: bool

    def fan_in(self) -> int:
        """Columns of the direction matrix: I, or C_I k_h k_w."""
        return self.direction[0].numel()

    def delta_weight(self) -> torch.Tensor:
        """``M D`` reshaped like W."""
        return (self.magnitude @ self.direction.flatten(1)).view_as(self.weight)

    def omega(self) -> torch.Tensor:
        """The effective weight ``W + M D``."""
        return self.weight + self.delta_weight()

    @torch.no_grad()
    def redraw_(self, generator: torch.Generator | None = None) -> None:
        """Draw a new direction D (eq. 11-13) and set M = 0; the layer's function is unchanged."""
        d = draw_direction(self.rank, self.fan_in(), generator)
        self.direction.copy_(d.view_as(self.direction))
        self.magnitude.zero_()

    @torch.no_grad()
    def merge_(self) -> None:
        """``W := W + M D``, ``M := 0`` (section 3.1.3); the layer's function is unchanged."""
        self.weight.add_(self.delta_weight())
        self.magnitude.zero_()

    def merge_and_redraw_(self, generator: torch.Generator | None = None) -> None:
        """Merge ``M D`` into W, then draw a new D (M = 0)."""
        self.merge_()
        self.redraw_(generator)

    @torch.no_grad()
    def take_weights_(self, source: nn.Module, low_rank: bool) -> None:
        """Copy ``source``'s weight and bias (a layer of the same shape, M = 0 here), then set
        the mode: the layer computes what ``source`` computes."""
        self.weight.copy_(source.weight)
        if source.bias is not None:
            self.bias.copy_(source.bias)
        self.set_low_rank(low_rank)

    def set_low_rank(self, enabled: bool) -> None:
        """Low-rank mode freezes W (only M and the bias train); full-rank mode merges M D into
        W first and trains W like a plain layer."""
        if self.low_rank and not enabled:
            self.merge_()
        self.low_rank = bool(enabled)
        self.weight.requires_grad_(not enabled)


class FactoLinear(_Factorized, nn.Linear):
    """A linear layer trained as ``W + M D`` (eq. 8): M (O, R) trains, W (O, I) is frozen,
    D (R, I) is a fixed random direction buffer; backward keeps ``x D^T`` (B, R).

    ``inr`` = R / I. In full-rank mode (``low_rank=False``) it is a plain ``nn.Linear`` and
    W trains; M stays 0 and unused.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        inr: float = 0.3,
        low_rank: bool = True,
        generator: torch.Generator | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.inr = inr
        self.rank = internal_size(in_features, inr)
        self.magnitude = nn.Parameter(
            torch.zeros(out_features, self.rank, device=device, dtype=dtype)
        )
        self.register_buffer(
            "direction", torch.zeros(self.rank, in_features, device=device, dtype=dtype)
        )
        self.redraw_(generator)
        self.low_rank = False
        self.set_low_rank(low_rank)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, inr: float, low_rank: bool = True, generator=None
    ) -> FactoLinear:
        """A FactoLinear computing exactly what ``linear`` computes (M = 0), sharing no storage."""
        layer = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            inr,
            low_rank=False,
            generator=generator,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        layer.take_weights_(linear, low_rank)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., I) -> (..., O)."""
        if not self.low_rank:
            return F.linear(x, self.weight, self.bias)
        return FactoLinearFunction.apply(x, self.weight, self.magnitude, self.direction, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, low_rank={self.low_rank}"


class FactoConv2d(_Factorized, nn.Conv2d):
    """A convolution trained as ``W + M D`` (eq. 9-10): M (C_O, C_R) trains, W is frozen,
    D (C_R, C_I, k_h, k_w) is a fixed random direction buffer; backward keeps
    ``D * X`` (B, C_R, H', W') mean-pooled with ``compression_kernel`` k (FMC).

    ``inr`` = C_R / C_I. Saved bytes shrink by ``1 - C_R / (C_I k k)`` versus keeping X
    (stride 1, same padding). In full-rank mode it is a plain ``nn.Conv2d``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        bias: bool = True,
        inr: float = 0.3,
        compression_kernel: int = 1,
        low_rank: bool = True,
        generator: torch.Generator | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            bias=bias,
            device=device,
            dtype=dtype,
        )
        if isinstance(self.padding, str):
            raise ConfigError(
                f"FactoConv2d needs numeric padding, got {self.padding!r}; give it in pixels"
            )
        self.inr = inr
        self.rank = internal_size(in_channels, inr)
        self.compression_kernel = _check_kernel(compression_kernel)
        self.magnitude = nn.Parameter(
            torch.zeros(out_channels, self.rank, device=device, dtype=dtype)
        )
        self.register_buffer(
            "direction",
            torch.zeros(self.rank, in_channels, *self.kernel_size, device=device, dtype=dtype),
        )
        self.redraw_(generator)
        self.low_rank = False
        self.set_low_rank(low_rank)

    @classmethod
    def from_conv(
        cls,
        conv: nn.Conv2d,
        inr: float,
        compression_kernel: int = 1,
        low_rank: bool = True,
        generator=None,
    ) -> FactoConv2d:
        """A FactoConv2d computing exactly what ``conv`` computes (M = 0), sharing no storage.

        Raises ``ConfigError`` for grouped convolutions and non-zero padding modes.
        """
        if conv.groups != 1 or conv.padding_mode != "zeros":
            raise ConfigError(
                f"Facto-CNN converts plain convolutions only (groups=1, zero padding); "
                f"got groups={conv.groups}, padding_mode={conv.padding_mode!r}"
            )
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.bias is not None,
            inr,
            compression_kernel,
            low_rank=False,
            generator=generator,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        layer.take_weights_(conv, low_rank)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_I, H, W) -> (B, C_O, H', W')."""
        if not self.low_rank:
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)
        return FactoConv2dFunction.apply(
            x,
            self.weight,
            self.magnitude,
            self.direction,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.compression_kernel,
        )

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, rank={self.rank}, "
            f"compression_kernel={self.compression_kernel}, low_rank={self.low_rank}"
        )


class MaskReLU(nn.ReLU):
    """ReLU that keeps a 1-bit mask (8 elements per byte) for backward instead of its output."""

    def __init__(self):
        super().__init__(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Any shape -> same shape."""
        return MaskReLUFunction.apply(x)


class MaskMaxPool2d(nn.MaxPool2d):
    """Non-overlapping max pooling (stride = kernel, no padding) keeping a 1-bit argmax mask
    of its input instead of the input plus int64 indices."""

    def __init__(self, kernel_size):
        super().__init__(kernel_size)
        self._window = nn.modules.utils._pair(kernel_size)

    @classmethod
    def from_pool(cls, pool: nn.MaxPool2d) -> MaskMaxPool2d:
        """The mask version of ``pool``; ``ConfigError`` if its windows overlap or are padded."""
        kernel = nn.modules.utils._pair(pool.kernel_size)
        stride = nn.modules.utils._pair(pool.stride if pool.stride is not None else kernel)
        simple = (
            stride == kernel
            and nn.modules.utils._pair(pool.padding) == (0, 0)
            and nn.modules.utils._pair(pool.dilation) == (1, 1)
            and not pool.ceil_mode
            and not pool.return_indices
        )
        if not simple:
            raise ConfigError(
                f"a 1-bit mask max pool needs non-overlapping windows without padding "
                f"(stride = kernel), got {pool}"
            )
        return cls(kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H // k_h, W // k_w)."""
        if x.dim() != 4:
            raise ShapeError(f"MaskMaxPool2d takes (B, C, H, W) inputs, got shape {tuple(x.shape)}")
        return MaskMaxPool2dFunction.apply(x, self._window)


class OffsetMaxPool2d(nn.MaxPool2d):
    """Max pooling for windows a 1-bit mask cannot serve (overlapping or padded, e.g. the
    3x3 / 2 pool of ResNet stems): keeps one ``uint8`` window offset per output element."""

    @classmethod
    def from_pool(cls, pool: nn.MaxPool2d) -> OffsetMaxPool2d:
        """The offset version of ``pool``; ``ConfigError`` for windows over 256 elements."""
        kernel = nn.modules.utils._pair(pool.kernel_size)
        if kernel[0] * kernel[1] > 256 or pool.return_indices:
            raise ConfigError(
                f"an offset max pool needs windows of at most 256 elements and no "
                f"return_indices, got {pool}"
            )
        return cls(kernel, pool.stride, pool.padding, pool.dilation, ceil_mode=pool.ceil_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H', W')."""
        if x.dim() != 4:
            raise ShapeError(
                f"OffsetMaxPool2d takes (B, C, H, W) inputs, got shape {tuple(x.shape)}"
            )
        pair = nn.modules.utils._pair
        stride = pair(self.stride if self.stride is not None else self.kernel_size)
        return OffsetMaxPool2dFunction.apply(
            x,
            pair(self.kernel_size),
            stride,
            pair(self.padding),
            pair(self.dilation),
            self.ceil_mode,
        )


class PooledScale(Scale):
    """A Fixup scaling layer (``x * s``) that keeps its input mean-pooled with
    ``compression_kernel`` (section 3.3); full-rank mode is the plain :class:`Scale`."""

    def __init__(self, compression_kernel: int = 2, low_rank: bool = True):
        super().__init__()
        self.compression_kernel = _check_kernel(compression_kernel)
        self.low_rank = low_rank

    @classmethod
    def from_scale(
        cls, scale: Scale, compression_kernel: int, low_rank: bool = True
    ) -> PooledScale:
        """The pooled version of ``scale`` with a copy of its scalar."""
        layer = cls(compression_kernel, low_rank)
        # a new Parameter, not .to(): that swaps tensors, which fails on fake ones (estimates)
        layer.weight = nn.Parameter(scale.weight.detach().clone(), scale.weight.requires_grad)
        return layer

    def set_low_rank(self, enabled: bool) -> None:
        """Low-rank mode keeps a pooled input; full-rank mode is autograd's ``x * s``."""
        self.low_rank = bool(enabled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> same shape."""
        if not self.low_rank:
            return x * self.weight
        if x.dim() != 4 and self.compression_kernel > 1:
            raise ShapeError(
                f"PooledScale with a compression kernel takes (B, C, H, W), got {tuple(x.shape)}"
            )
        return PooledScaleFunction.apply(x, self.weight, self.compression_kernel)

    def extra_repr(self) -> str:
        return f"compression_kernel={self.compression_kernel}, low_rank={self.low_rank}"


class CompactBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training steps keep the normalised input as int8 per channel
    (:class:`CompactBatchNormFunction`): 1 byte per element for backward instead of the
    float32 input (4 bytes). The input gradient is approximate: it uses the dequantised
    ``x_hat`` (error <= max |x_hat| / 254 per element). Evaluation, ``torch.no_grad`` and
    full-rank mode (``low_rank=False``) are the plain ``nn.BatchNorm2d``; running statistics
    are updated once per training forward either way."""

    def __init__(self, *args, low_rank: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.low_rank = low_rank

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d, low_rank: bool = True) -> CompactBatchNorm2d:
        """The compact version of ``bn`` with copies of its parameters and running statistics."""
        layer = cls(
            bn.num_features,
            bn.eps,
            bn.momentum,
            bn.affine,
            bn.track_running_stats,
            low_rank=low_rank,
            device=bn.weight.device if bn.affine else None,
            dtype=bn.weight.dtype if bn.affine else None,
        )
        # new tensors, not load_state_dict's copy_: works on fake tensors (estimates) too
        for name, value in [*bn.named_parameters(recurse=False), *bn.named_buffers()]:
            if isinstance(value, nn.Parameter):
                value = nn.Parameter(value.detach().clone(), value.requires_grad)
            else:
                value = value.clone()
            setattr(layer, name, value)
        return layer

    def set_low_rank(self, enabled: bool) -> None:
        """Low-rank mode keeps the int8 normalised input; full-rank mode is ``nn.BatchNorm2d``."""
        self.low_rank = bool(enabled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> same shape."""
        if not (self.low_rank and self.training and torch.is_grad_enabled()):
            return super().forward(x)
        self._check_input_dim(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        return CompactBatchNormFunction.apply(
            x, self.weight, self.bias, self.running_mean, self.running_var, momentum, self.eps, True
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, low_rank={self.low_rank}"
