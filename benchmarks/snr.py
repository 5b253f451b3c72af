"""Benchmark ``snr``: numerical error of layer-wise and hybrid reconstruction (sections 4.1,
5.1 of Hascoet et al., *Reversible designs for extreme memory cost reduction of CNN training*).

1. The SNR factor ``alpha`` of one invertible batch norm: the toy layer against eq. 19c
   (the paper's figure 6) and random parameterisations against the general formula.
2. ``alpha`` of the invertible Leaky ReLU against eq. 28c (figure 7), where sign flips start
   to matter, and skewed inputs against the general formula.
3. SNR of every reconstructed activation through ``layerwise18`` and ``hybrid18`` bodies for
   several depths and negative slopes (figures 10-12), the SNR change per layer type inside
   a layer-wise chain, and the effect of ``eps_i`` when some batch-norm scales are small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from smallfoot.bench import BenchResult, Claim, register_benchmark, register_claims
from smallfoot.models import build_model
from smallfoot.reversible import InvertibleBatchNorm2d, InvertibleConv2d, InvertibleLeakyReLU
from smallfoot.reversible.snr import (
    ChainSNR,
    alpha_batchnorm,
    alpha_batchnorm_toy,
    alpha_leaky_relu,
    measure_alpha,
    snr_through_chain,
    to_db,
)

NOISE = 1e-5  # injected noise, relative to the output RMS: the output SNR is 100 dB
MODELS = ("layerwise18", "hybrid18")


@dataclass(frozen=True)
class Setup:
    """Sizes of one run of the benchmark (full or quick)."""

    rhos: tuple[float, ...]
    bn_cases: int
    ns: tuple[float, ...]
    flip_noise: tuple[float, ...]
    depths: tuple[int, ...]
    slopes: tuple[float, ...]
    eps_is: tuple[float, ...]
    layer_type_slopes: tuple[float, ...]
    samples: int
    image: int
    width: int
    batch: int


FULL = Setup(
    rhos=(0.01, 0.03, 0.1, 0.3, 0.5, 1.0, 2.0, 3.0, 10.0, 30.0, 100.0),
    bn_cases=6,
    ns=(1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0),
    flip_noise=(1e-4, 1e-3, 1e-2, 0.03, 0.1, 0.3, 1.0),
    depths=(1, 2, 4, 8),
    slopes=(0.5, 0.2, 0.1),
    eps_is=(0.001, 0.01, 0.1, 0.5),
    layer_type_slopes=(0.5, 0.1),
    samples=256,
    image=32,
    width=8,
    batch=16,
)
QUICK = Setup(
    rhos=(0.1, 1.0, 10.0),
    bn_cases=2,
    ns=(1.0, 2.0, 10.0),
    flip_noise=(1e-3, 0.3),
    depths=(1, 2),
    slopes=(0.5, 0.1),
    eps_is=(0.01, 0.1),
    layer_type_slopes=(0.5,),
    samples=32,
    image=16,
    width=4,
    batch=4,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _finite(value: float, digits: int = 2) -> float | None:
    """``value`` rounded, or ``None`` where the reconstruction overflowed (``-inf`` dB)."""
    return round(value, digits) if math.isfinite(value) else None


def _rel_error(measured: float, theory: float) -> float:
    return round(measured / theory - 1, 4) or 0.0  # no "-0" in the table


def _batchnorm_with_scales(scales, bias=None, eps_i: float = 1e-3) -> InvertibleBatchNorm2d:
    """An invertible batch norm whose scale ``|gamma| + eps_i`` equals ``scales``."""
    scales = torch.as_tensor(scales, dtype=torch.float32)
    layer = InvertibleBatchNorm2d(len(scales), eps_i=eps_i)
    with torch.no_grad():
        layer.weight.copy_(scales - eps_i)
        if bias is not None:
            layer.bias.copy_(torch.as_tensor(bias))
    return layer


def batchnorm_toy_rows(setup: Setup) -> list[dict[str, Any]]:
    """Toy batch norm (2 channels, N(0, 1) input, scales ``[1, rho]``): eq. 19c vs measured."""
    rows = []
    for index, rho in enumerate(setup.rhos):
        x = torch.randn(setup.samples, 2, 16, 16, generator=_gen(index), dtype=torch.float64)
        measured = measure_alpha(_batchnorm_with_scales([1.0, rho]), x, NOISE, _gen(100 + index))
        theory = alpha_batchnorm_toy(rho)
        rows.append(
            {
                "section": "batch norm, toy layer (eq. 19c; figure 6)",
                "rho": rho,
                "alpha_theory": theory,
                "alpha_measured": measured,
                "relative_error": _rel_error(measured, theory),
            }
        )
    return rows


def batchnorm_general_rows(setup: Setup) -> list[dict[str, Any]]:
    """Random 8-channel batch norms on Gaussian inputs with random per-channel mean and std:
    the general formula (:func:`alpha_batchnorm`) vs measured."""
    rows = []
    for case in range(setup.bn_cases):
        g = _gen(1000 + case)
        channels = 8
        mean = 2 * torch.rand(channels, generator=g, dtype=torch.float64) - 1
        std = 10 ** (2 * torch.rand(channels, generator=g, dtype=torch.float64) - 1)
        scales = 10 ** (2 * torch.rand(channels, generator=g, dtype=torch.float64) - 1)
        bias = 0.5 * torch.randn(channels, generator=g, dtype=torch.float64)
        x = mean.view(1, -1, 1, 1) + std.view(1, -1, 1, 1) * torch.randn(
            setup.samples, channels, 16, 16, generator=g, dtype=torch.float64
        )
        layer = _batchnorm_with_scales(scales, bias)
        measured = measure_alpha(layer, x, NOISE, g)
        theory = alpha_batchnorm(mean, std, layer.scale().detach(), bias)
        rows.append(
            {
                "section": "batch norm, random parameterisations (general formula)",
                "case": case,
                "scale_range": f"{scales.min():.2g}-{scales.max():.2g}",
                "std_range": f"{std.min():.2g}-{std.max():.2g}",
                "alpha_theory": theory,
                "alpha_measured": measured,
                "relative_error": _rel_error(measured, theory),
            }
        )
    return rows


def leaky_relu_rows(setup: Setup) -> list[dict[str, Any]]:
    """Leaky ReLU on N(0, 1) inputs (symmetric; at noise 1e-5 sign flips touch about 1e-5 of
    the elements): eq. 28c vs measured."""
    rows = []
    for index, n in enumerate(setup.ns):
        x = torch.randn(setup.samples, 4, 16, 16, generator=_gen(2000 + index), dtype=torch.float64)
        measured = measure_alpha(InvertibleLeakyReLU(1 / n), x, NOISE, _gen(2100 + index))
        theory = alpha_leaky_relu(n)
        rows.append(
            {
                "section": "Leaky ReLU (eq. 28c; figure 7)",
                "n": n,
                "negative_slope": round(1 / n, 4),
                "alpha_theory": theory,
                "alpha_measured": measured,
                "relative_error": _rel_error(measured, theory),
            }
        )
    for index, shift in enumerate((-0.5, 0.5, 1.0)):
        x = shift + torch.randn(
            setup.samples, 4, 16, 16, generator=_gen(2200 + index), dtype=torch.float64
        )
        n = 5.0
        negative = x <= 0
        fraction = negative.double().mean().item()
        power = (x[negative].square().sum() / x.square().sum()).item()
        measured = measure_alpha(InvertibleLeakyReLU(1 / n), x, NOISE, _gen(2300 + index))
        theory = alpha_leaky_relu(n, fraction, power)
        rows.append(
            {
                "section": "Leaky ReLU, skewed inputs N(shift, 1) (general formula)",
                "n": n,
                "input_shift": shift,
                "negative_fraction": round(fraction, 3),
                "negative_power": round(power, 3),
                "alpha_eq28c": alpha_leaky_relu(n),
                "alpha_theory": theory,
                "alpha_measured": measured,
                "relative_error": _rel_error(measured, theory),
            }
        )
    return rows


def sign_flip_rows(setup: Setup) -> list[dict[str, Any]]:
    """Measured over theoretical ``alpha`` as the noise approaches the signal (sign flips)."""
    rows = []
    x = torch.randn(setup.samples, 4, 16, 16, generator=_gen(3000), dtype=torch.float64)
    for n in (2.0, 10.0):
        for index, noise in enumerate(setup.flip_noise):
            layer = InvertibleLeakyReLU(1 / n)
            measured = measure_alpha(layer, x, noise, _gen(3100 + index))
            y = layer(x)  # a noise draw like measure_alpha's, to count the flipped signs
            noisy = y + noise * y.square().mean().sqrt() * torch.randn(
                y.shape, generator=_gen(3100 + index), dtype=y.dtype
            )
            flipped = ((noisy > 0) != (y > 0)).double().mean().item()
            rows.append(
                {
                    "section": "Leaky ReLU: noise approaching the signal (sign flips)",
                    "n": n,
                    "relative_noise": noise,
                    "output_snr_db": round(to_db(noise**-2), 1),
                    "flipped_fraction": flipped,
                    "alpha_measured": measured,
                    "measured_over_theory": round(measured / alpha_leaky_relu(n), 3),
                }
            )
    return rows


def chain_input(model, setup: Setup, seed: int = 0) -> torch.Tensor:
    """The body's input: the stem's output on a batch of N(0, 1) images (``(B, width, S, S)``)."""
    images = torch.randn(setup.batch, 3, setup.image, setup.image, generator=_gen(seed))
    with torch.no_grad():
        return model.stem(images)


def randomise_batchnorms(model, seed: int) -> None:
    """Draw every invertible batch norm's ``gamma`` from N(0, 1) (``beta`` stays 0), so that
    some scales ``|gamma| + eps_i`` are close to ``eps_i``, as after training."""
    g = _gen(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, InvertibleBatchNorm2d):
                module.weight.copy_(torch.randn(module.weight.shape, generator=g))


def analyse(name: str, setup: Setup, blocks: int, slope: float, eps_i: float, random_bn: bool):
    """``(noise-injected ChainSNR, float32 ChainSNR)`` of the body of model ``name``."""
    torch.manual_seed(0)
    model = build_model(
        name,
        (3, setup.image, setup.image),
        10,
        width=setup.width,
        blocks_per_stage=blocks,
        negative_slope=slope,
        eps_i=eps_i,
    )
    if random_bn:
        randomise_batchnorms(model, seed=1)
    x = chain_input(model, setup)
    return (
        snr_through_chain(model.body, x, NOISE, generator=_gen(4000)),
        snr_through_chain(model.body, x, noise_std=None),
    )


def _chain_row(section: str, name: str, blocks: int, slope: float, eps_i: float, noisy, plain):
    return {
        "section": section,
        "model": name,
        "blocks_per_stage": blocks,
        "negative_slope": slope,
        "eps_i": eps_i,
        "layers": noisy.depth[-1],
        "noise_input_snr_db": _finite(noisy.snr_db[0]),
        "noise_worst_snr_db": _finite(noisy.worst_db()),
        "f32_input_snr_db": _finite(plain.snr_db[0]),
        "f32_worst_snr_db": _finite(plain.worst_db()),
        "noise_db_lost_per_layer": _finite(
            (to_db(1 / NOISE**2) - noisy.worst_db()) / noisy.depth[-1], 3
        ),
    }


def chain_rows(setup: Setup) -> tuple[list[dict[str, Any]], dict]:
    """SNR through both models at every depth and slope (``eps_i = 0.1``, initial weights);
    also returns the curves ``{(model, blocks, slope): (noisy, plain)}`` for the plots."""
    rows, curves = [], {}
    section = "SNR through the chain by depth and negative slope (initial weights, eps_i 0.1)"
    for blocks in setup.depths:
        for slope in setup.slopes:
            for name in MODELS:
                noisy, plain = analyse(name, setup, blocks, slope, 0.1, random_bn=False)
                curves[(name, blocks, slope)] = (noisy, plain)
                rows.append(_chain_row(section, name, blocks, slope, 0.1, noisy, plain))
    return rows, curves


def eps_i_rows(setup: Setup) -> list[dict[str, Any]]:
    """SNR through both models with random batch-norm gammas, for every ``eps_i``."""
    rows = []
    blocks, slope = 2, 0.5
    section = f"eps_i with random BN gammas N(0, 1) ({blocks} blocks per stage, slope {slope})"
    for eps_i in setup.eps_is:
        for name in MODELS:
            noisy, plain = analyse(name, setup, blocks, slope, eps_i, random_bn=True)
            rows.append(_chain_row(section, name, blocks, slope, eps_i, noisy, plain))
    return rows


def layer_type_rows(setup: Setup, slope: float) -> list[dict[str, Any]]:
    """Inside a layer-wise chain (2 blocks per stage, initial weights): the mean SNR change
    per layer type as the chain's noise passes (``in_chain_db``), the same layers measured
    alone with white noise (``white_noise_db``), and the theory for white noise with the
    layer's actual input statistics."""
    torch.manual_seed(0)
    model = build_model(
        "layerwise18",
        (3, setup.image, setup.image),
        10,
        width=setup.width,
        blocks_per_stage=2,
        negative_slope=slope,
    )
    x = chain_input(model, setup)
    noisy = snr_through_chain(model.body, x, NOISE, generator=_gen(4000))
    inputs = [x.double()]
    layers = [layer.double() for layer in model.body.blocks]
    with torch.no_grad():
        for layer in layers:
            inputs.append(layer(inputs[-1]))
    rows = []
    for kind in (InvertibleConv2d, InvertibleBatchNorm2d, InvertibleLeakyReLU):
        chain, white, theory = [], [], []
        for index, layer in enumerate(layers):
            if type(layer) is not kind:
                continue
            x_in = inputs[index]
            chain.append(noisy.snr_db[index] - noisy.snr_db[index + 1])
            white.append(to_db(measure_alpha(layer, x_in, NOISE, _gen(5000 + index))))
            if kind is InvertibleBatchNorm2d:
                var, mean = torch.var_mean(x_in, dim=(0, 2, 3), unbiased=False)
                std = (var + layer.eps).sqrt()
                theory.append(to_db(alpha_batchnorm(mean, std, layer.scale(), layer.bias)))
            elif kind is InvertibleLeakyReLU:
                negative = x_in <= 0
                fraction = negative.double().mean().item()
                power = (x_in[negative].square().sum() / x_in.square().sum()).item()
                theory.append(to_db(alpha_leaky_relu(1 / slope, fraction, power)))
        rows.append(
            {
                "section": "SNR change per layer type in layerwise18 (2 blocks per stage)",
                "negative_slope": slope,
                "layer": kind.__name__,
                "count": len(chain),
                "in_chain_db": round(sum(chain) / len(chain), 2),
                "white_noise_db": round(sum(white) / len(white), 2),
                "theory_db": round(sum(theory) / len(theory), 2) if theory else None,
                "eq28c_db": round(to_db(alpha_leaky_relu(1 / slope)), 2)
                if kind is InvertibleLeakyReLU
                else None,
            }
        )
    return rows


def plot_alpha(rows, out_dir: Path) -> list[Path]:
    """Figures 6 and 7: alpha of the batch norm and of the Leaky ReLU, theory and measured."""
    from smallfoot._figures import figure

    toy = [r for r in rows if "rho" in r]
    general = [r for r in rows if "case" in r]
    path = out_dir / "alpha_batchnorm.png"
    with figure(path, ncols=2, size=(9, 3.6)) as (fig, (left, right)):
        rhos = torch.logspace(-2, 2, 200).tolist()
        left.plot(rhos, [alpha_batchnorm_toy(r) for r in rhos], label="theory (eq. 19c)")
        left.plot(
            [r["rho"] for r in toy], [r["alpha_measured"] for r in toy], "o", label="measured"
        )
        left.set(xscale="log", yscale="log", xlabel="rho (scale of channel 2)", ylabel="alpha")
        left.set_title("toy invertible BN")
        left.legend(fontsize=8)
        theory = [r["alpha_theory"] for r in general]
        right.plot(theory, [r["alpha_measured"] for r in general], "o", label="measured")
        span = [min(theory) / 1.5, max(theory) * 1.5]
        right.plot(span, span, "-", lw=0.8, label="y = x")
        right.set(
            xscale="log", yscale="log", xlabel="alpha, general formula", ylabel="alpha measured"
        )
        right.set_title("random 8-channel BN")
        right.legend(fontsize=8)
    paths = [path]

    relu = [r for r in rows if r.get("section", "").startswith("Leaky ReLU (eq. 28c")]
    flips = [r for r in rows if "relative_noise" in r]
    path = out_dir / "alpha_leaky_relu.png"
    with figure(path, ncols=2, size=(9, 3.6)) as (fig, (left, right)):
        ns = torch.logspace(0, 2, 200).tolist()
        left.plot(ns, [alpha_leaky_relu(n) for n in ns], label="theory (eq. 28c)")
        left.plot(
            [r["n"] for r in relu], [r["alpha_measured"] for r in relu], "o", label="measured"
        )
        left.set(xscale="log", yscale="log", xlabel="n = 1 / negative_slope", ylabel="alpha")
        left.set_title("invertible Leaky ReLU (noise 1e-5)")
        left.legend(fontsize=8)
        for n in sorted({r["n"] for r in flips}):
            points = [
                (r["relative_noise"], r["measured_over_theory"]) for r in flips if r["n"] == n
            ]
            right.plot(*zip(*points, strict=True), "o-", label=f"n = {n:g}")
        right.axhline(1.0, color="gray", lw=0.8)
        right.set(xscale="log", xlabel="noise / output RMS", ylabel="alpha measured / eq. 28c")
        right.set_title("sign flips")
        right.legend(fontsize=8)
    paths.append(path)
    return paths


def _plot_curve(ax, result: ChainSNR, label: str, style: str, color) -> None:
    points = [(d, s) for d, s in zip(result.depth, result.snr_db, strict=True) if math.isfinite(s)]
    ax.plot(*zip(*points, strict=True), style, color=color, label=label, lw=1.2, ms=3)
    hidden = [(h.depth, h.snr_db) for h in result.hidden if math.isfinite(h.snr_db)]
    if hidden:
        ax.plot(*zip(*hidden, strict=True), "x", color=color, ms=4, label=f"{label}, hidden F/G")


def plot_by_layer(curves, setup: Setup, out_dir: Path) -> Path:
    """Figures 10 and 12: SNR of each reconstructed activation against its depth."""
    from smallfoot._figures import figure, pyplot

    blocks = 2 if 2 in setup.depths else setup.depths[-1]
    path = out_dir / "snr_by_layer.png"
    with figure(path, ncols=2, size=(10, 4), sharey=False) as (fig, axes):
        colors = pyplot().rcParams["axes.prop_cycle"].by_key()["color"]
        for ax, which, title in (
            (axes[0], 0, f"noise {NOISE:g} injected at the output (float64)"),
            (axes[1], 1, "float32 rounding only"),
        ):
            for index, slope in enumerate(setup.slopes):
                for name, style in (("layerwise18", "-"), ("hybrid18", "--o")):
                    result = curves[(name, blocks, slope)][which]
                    _plot_curve(ax, result, f"{name}, slope {slope:g}", style, colors[index])
            ax.set(xlabel="depth (layers from the chain input)", ylabel="SNR (dB)", title=title)
            ax.axhline(0, color="gray", lw=0.6)
        axes[0].legend(fontsize=7)
        fig.suptitle(
            f"SNR of reconstructed activations ({blocks} blocks per stage, initial weights)"
        )
    return path


def plot_by_depth(rows, setup: Setup, out_dir: Path) -> Path:
    """Figure 11: the worst reconstructed SNR against the depth, per slope and model."""
    from smallfoot._figures import figure, pyplot

    chain = [r for r in rows if "layers" in r and "by depth" in r["section"]]
    path = out_dir / "snr_vs_depth.png"
    with figure(path, ncols=2, size=(10, 4)) as (fig, axes):
        colors = pyplot().rcParams["axes.prop_cycle"].by_key()["color"]
        for ax, key, title in (
            (axes[0], "noise_worst_snr_db", f"noise {NOISE:g} at the output (float64)"),
            (axes[1], "f32_worst_snr_db", "float32 rounding only"),
        ):
            for index, slope in enumerate(setup.slopes):
                for name, style in (("layerwise18", "o-"), ("hybrid18", "s--")):
                    points = [
                        (r["layers"], r[key])
                        for r in chain
                        if r["model"] == name
                        and r["negative_slope"] == slope
                        and r[key] is not None
                    ]
                    if points:
                        label = f"{name}, slope {slope:g}"
                        ax.plot(*zip(*points, strict=True), style, color=colors[index], label=label)
            ax.set(xlabel="layers in the chain", ylabel="worst reconstructed SNR (dB)", title=title)
            ax.axhline(0, color="gray", lw=0.6)
        axes[0].legend(fontsize=7)
    return path


def plot_eps_i(rows, out_dir: Path) -> Path:
    """The worst reconstructed SNR against ``eps_i`` with random batch-norm gammas."""
    from smallfoot._figures import figure

    eps_rows = [r for r in rows if "layers" in r and "random BN" in r["section"]]
    path = out_dir / "snr_vs_eps_i.png"
    with figure(path, size=(5.5, 4)) as (fig, ax):
        for name, style in (("layerwise18", "o-"), ("hybrid18", "s--")):
            for key, label in (
                ("noise_worst_snr_db", "noise 1e-5"),
                ("f32_worst_snr_db", "float32"),
            ):
                points = [
                    (r["eps_i"], r[key])
                    for r in eps_rows
                    if r["model"] == name and r[key] is not None
                ]
                if points:
                    ax.plot(*zip(*points, strict=True), style, label=f"{name}, {label}")
        ax.set(xscale="log", xlabel="eps_i", ylabel="worst reconstructed SNR (dB)")
        ax.set_title("eps_i with random BN gammas N(0, 1)")
        ax.axhline(0, color="gray", lw=0.6)
        ax.legend(fontsize=7)
    return path


def summary(rows, setup: Setup) -> str:
    """One sentence per model: the worst reconstructed SNR of the deepest chains."""
    deepest = max(setup.depths)
    chain = [r for r in rows if r.get("blocks_per_stage") == deepest and "by depth" in r["section"]]

    def cell(value):
        return "overflow" if value is None else f"{value:.0f} dB"

    parts = []
    for name in MODELS:
        figures = ", ".join(
            f"slope {r['negative_slope']:g}: {cell(r['noise_worst_snr_db'])} "
            f"({cell(r['f32_worst_snr_db'])})"
            for r in chain
            if r["model"] == name
        )
        parts.append(f"{name} {figures}")
    layers = chain[0]["layers"]
    return (
        f"Worst reconstructed SNR at {deepest} blocks per stage ({layers} layers), noise 1e-5 "
        f"injected (float32 rounding only): {'; '.join(parts)}."
    )


@register_benchmark(
    "snr",
    "SNR of reconstructed activations: invertible BN / Leaky ReLU theory, layer-wise vs hybrid",
)
def run_snr_bench(quick: bool, out_dir: Path) -> BenchResult:
    """All sections of the module docstring; ``quick`` shrinks every sweep (a few seconds)."""
    setup = QUICK if quick else FULL
    rows = batchnorm_toy_rows(setup) + batchnorm_general_rows(setup)
    rows += leaky_relu_rows(setup) + sign_flip_rows(setup)
    figures = plot_alpha(rows, out_dir)
    by_depth, curves = chain_rows(setup)
    rows += by_depth + eps_i_rows(setup)
    for slope in setup.layer_type_slopes:
        rows += layer_type_rows(setup, slope)
    figures += [
        plot_by_layer(curves, setup, out_dir),
        plot_by_depth(rows, setup, out_dir),
        plot_eps_i(rows, out_dir),
    ]
    notes = (
        f"alpha = snr_in / snr_out of one layer's inverse (smallfoot.reversible.snr."
        f"measure_alpha): a float64 copy of the layer, Gaussian noise of {NOISE:g} times the "
        "output RMS added to its output, the input reconstructed by inverse(); batch norms in "
        "training mode (batch statistics). Toy BN: 2 channels, N(0, 1) input of "
        f"{setup.samples}x2x16x16, "
        "scales [1, rho] (eps_i 1e-3, gamma set so |gamma| + eps_i = scale). General BN: 8 "
        "channels, means U(-1, 1), stds and scales log-uniform in [0.1, 10], biases N(0, 0.25), "
        "against alpha_batchnorm. Leaky ReLU: N(0, 1) input of "
        f"{setup.samples}x4x16x16 (symmetric, so "
        "eq. 28c applies); skewed rows shift the input and use the general formula with the "
        "input's negative fraction and power share. Sign flips: relative noise up to 1. "
        f"Chains: the body (RevSequence) of layerwise18 / hybrid18 at width {setup.width}, "
        f"input the stem output on {setup.batch} N(0, 1) images of 3x{setup.image}x"
        f"{setup.image}, training mode, initial weights (torch seed 0) unless stated, analysed "
        "by snr_through_chain. noise_*: float64, noise 1e-5 at the output (100 dB), "
        "then every member inverted; f32_*: the float32 chain inverted from its exact output, "
        "errors from rounding only, against the float32 forward's activations. input_snr: the "
        "chain input (reconstructed last); worst_snr: the lowest SNR of any reconstructed "
        "activation including hybrid blocks' hidden F/G activations, reconstructed layer-wise "
        "from F(x2) = y1 - x1 and G(y1) = y2 - x2 as the hybrid backward does. Depth counts "
        "invertible conv, BN and Leaky ReLU layers (pooling is a permutation and counts 0; a "
        "hybrid block counts its 6 layers), so both models have 6 x blocks_per_stage x 4 layers. "
        "An empty SNR cell: the reconstruction overflowed to inf/NaN (SNR 0). Per layer type: "
        "in_chain_db is the mean SNR change across layers of that type in the noise-injected "
        "chain; white_noise_db measures each layer alone on its true input; theory_db is "
        "alpha_batchnorm / alpha_leaky_relu with the layer's actual input statistics."
    )
    return BenchResult(rows=rows, figures=figures, notes=summary(rows, setup) + " " + notes)


@register_claims("snr")
def snr_claims(rows: list[dict[str, Any]], command: str) -> list[Claim]:
    """The paper's SNR analysis on the rows: alpha of batch norm (eq. 19, 22) and of Leaky ReLU
    (eq. 28) as predicted (largest relative error, met within 5%), and the hybrid losing less
    SNR per layer than the layer-wise design at every depth and slope (figures 10-12)."""
    claims = []
    checks = [
        ("snr.bn_alpha", "batch norm", "batch norm's SNR ratio alpha",
         "eq. 19c and 22: alpha = snr_in / snr_out of invertible batch norm"),
        ("snr.leaky_relu_alpha", "Leaky ReLU (eq. 28c", "Leaky ReLU's SNR ratio alpha",
         "eq. 28c: alpha of invertible Leaky ReLU with negative slope 1/n"),
    ]  # fmt: skip
    for claim_id, prefix, what, paper in checks:
        errors = [abs(r["relative_error"]) for r in rows
                  if str(r.get("section")).startswith(prefix) and "relative_error" in r]  # fmt: skip
        if errors:
            claims.append(Claim(
                claim_id,
                f"The paper's formula predicts {what} (measured: the largest relative error "
                f"over {len(errors)} Monte-Carlo cases; met within 5%).",
                paper, max(errors), "<=", 0.05, seeds=1, command=command,
            ))  # fmt: skip
    lost: dict[tuple, dict[str, float]] = {}
    for r in rows:
        if "by depth" in str(r.get("section")) and "noise_db_lost_per_layer" in r:
            key = (r["blocks_per_stage"], r["negative_slope"])
            lost.setdefault(key, {})[r["model"]] = r["noise_db_lost_per_layer"]
    margins = {key: m["layerwise18"] - m["hybrid18"] for key, m in lost.items()
               if {"layerwise18", "hybrid18"} <= m.keys()}  # fmt: skip
    if margins:
        claims.append(Claim(
            "snr.hybrid_keeps_snr",
            f"The hybrid design loses less SNR per layer than the layer-wise design at every "
            f"depth and negative slope ({len(margins)} settings, initial weights; measured: the "
            f"smallest margin).",
            "figures 10-12: SNR degrades through every layer of a layer-wise model, the hybrid "
            "recomputes each block's input with the reversible structure",
            round(min(margins.values()), 3), ">", 0.0, seeds=1, command=command, unit="dB/layer",
        ))  # fmt: skip
    return claims
