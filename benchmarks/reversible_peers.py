"""Benchmark ``reversible-peers``: smallfoot's reversible engine beside MemCNN (PyPI ``memcnn``).

The same F/G sub-networks (BN-ReLU-conv3x3 on half the channels, as
:func:`smallfoot.reversible.basic_rev_block`, optionally with dropout) with identical weights
run three ways: plain autograd (``nn.Sequential`` of the RevBlocks, the reference),
smallfoot's :class:`~smallfoot.reversible.RevSequence`, and MemCNN's ``AdditiveCoupling``
(the same coupling ``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)``) wrapped in its memory-saving
``InvertibleModuleWrapper``. Measured:

1. float64 exactness of one training step against plain autograd: outputs, input gradient
   (input a leaf tensor, and a non-leaf one), parameter gradients, BN running statistics and
   how often ``num_batches_tracked`` moved, and what happens to the caller's input tensor;
2. the same with dropout 0.3 inside F and G (MemCNN with and without ``preserve_rng_state``);
3. whether ``torch.compile`` (default, ``fullgraph=True``, and ``fullgraph=True`` with
   ``torch._dynamo.config.trace_autograd_ops``) runs forward + backward, and its gradients;
4. the meter's saved activations and peak of one training step, and seconds per step.

MemCNN is only called, never copied; it is imported when the benchmark runs.
"""

from __future__ import annotations

import copy
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from smallfoot.bench import BenchResult, Claim, register_benchmark, register_claims
from smallfoot.errors import ConfigError
from smallfoot.memory import measure
from smallfoot.reversible import RevSequence, basic_rev_block

PLAIN = "plain autograd"
OURS = "smallfoot RevSequence"
MEMCNN = "memcnn InvertibleModuleWrapper"
MEMCNN_RNG = "memcnn InvertibleModuleWrapper(preserve_rng_state=True)"
COMPILE_MODES = ("default", "fullgraph", "fullgraph+trace_autograd_ops")

_READ_INPUT_SCRIPT = """
import sys, warnings
warnings.simplefilter("ignore")
import torch
from benchmarks.reversible_peers import build_chain, import_memcnn, make_blocks
chain = build_chain(sys.argv[1], make_blocks(4, 1, 0.0, torch.float32), import_memcnn())
x = torch.randn(2, 4, 4, 4, requires_grad=True)
y = chain(x)
print(float(x.sum()))
"""


def import_memcnn():
    """The ``memcnn`` module; raises ``ConfigError`` with the install hint when it is missing."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            import memcnn
    except ImportError as error:
        raise ConfigError(
            "benchmark reversible-peers compares against MemCNN, which is not importable "
            f"({error}); pip install memcnn (beside torch 2.13) to run this benchmark"
        ) from error
    return memcnn


def make_blocks(channels: int, count: int, dropout: float, dtype: torch.dtype) -> list[nn.Module]:
    """``count`` seeded :func:`basic_rev_block` s on ``channels`` channels, in ``dtype``."""
    torch.manual_seed(0)
    return [basic_rev_block(channels, dropout).to(dtype) for _ in range(count)]


def build_chain(kind: str, blocks: list[nn.Module], memcnn) -> nn.Module:
    """The chain ``kind`` (:data:`PLAIN`, :data:`OURS`, :data:`MEMCNN`, :data:`MEMCNN_RNG`)
    over ``blocks`` (RevBlocks, used as they are: the chains share their parameters)."""
    if kind == PLAIN:
        return nn.Sequential(*blocks)
    if kind == OURS:
        return RevSequence(blocks)
    if kind in (MEMCNN, MEMCNN_RNG):
        return nn.Sequential(
            *(
                memcnn.InvertibleModuleWrapper(
                    memcnn.AdditiveCoupling(block.f, block.g), preserve_rng_state=kind == MEMCNN_RNG
                )
                for block in blocks
            )
        )
    raise ConfigError(f"unknown chain kind {kind!r}; choose one of {PLAIN}, {OURS}, {MEMCNN}")


def _batch_norms(blocks: list[nn.Module]) -> list[nn.BatchNorm2d]:
    return [m for b in blocks for m in b.modules() if isinstance(m, nn.BatchNorm2d)]


def one_step(kind: str, blocks, x: torch.Tensor, weight: torch.Tensor, memcnn, leaf: bool):
    """One forward + backward of ``sum(chain(x) * weight)`` on copies of ``blocks`` with the
    RNG seeded to 1. With ``leaf`` the chain gets the leaf tensor itself, else ``leaf * 1``.
    Returns the output, the leaf's gradient and value afterwards, the parameter gradients,
    the BN buffers, and whether the forward pass freed the leaf's storage."""
    blocks = copy.deepcopy(blocks)
    chain = build_chain(kind, blocks, memcnn)
    source = x.clone().requires_grad_()
    torch.manual_seed(1)
    out = chain(source if leaf else source * 1)
    freed = source.untyped_storage().nbytes() == 0
    (out * weight).sum().backward()
    bns = _batch_norms(blocks)
    return {
        "output": out.detach(),
        "input_grad": source.grad,
        "input_after": source.detach().clone(),
        "param_grads": [p.grad for b in blocks for p in b.parameters()],
        "running": [t for bn in bns for t in (bn.running_mean, bn.running_var)],
        "bn_counts": sorted({int(bn.num_batches_tracked) for bn in bns}),
        "freed": freed,
    }


def _max_err(values, reference) -> float:
    return max(float((a - b).abs().max()) for a, b in zip(values, reference, strict=True))


def _max_abs(values) -> float:
    return max(float(v.abs().max()) for v in values)


def input_readable(kind: str) -> str:
    """Whether the caller can read its input tensor between forward and backward, tried in a
    subprocess (reading a storage that was freed can crash the interpreter)."""
    done = subprocess.run(
        [sys.executable, "-c", _READ_INPUT_SCRIPT, kind], capture_output=True, timeout=300
    )
    if done.returncode == 0:
        return "yes"
    if done.returncode < 0:
        return f"no (killed by signal {-done.returncode})"
    return f"no (exit {done.returncode})"


def exactness_rows(memcnn, channels=8, count=3, batch=4, size=8) -> list[dict[str, Any]]:
    """float64, no dropout: each engine's errors against plain autograd after one step."""
    blocks = make_blocks(channels, count, 0.0, torch.float64)
    x = torch.randn(batch, channels, size, size, dtype=torch.float64)
    weight = torch.randn_like(x)
    ref = one_step(PLAIN, blocks, x, weight, memcnn, leaf=True)
    rows = []
    for kind in (OURS, MEMCNN):
        leaf = one_step(kind, blocks, x, weight, memcnn, leaf=True)
        inner = one_step(kind, blocks, x, weight, memcnn, leaf=False)
        rows.append(
            {
                "section": f"exactness vs plain autograd (float64, {count} blocks, "
                f"{channels} channels, batch {batch}, {size}x{size}, no dropout)",
                "implementation": kind,
                "output_err": _max_err([leaf["output"]], [ref["output"]]),
                "input_grad_err_leaf": _max_err([leaf["input_grad"]], [ref["input_grad"]]),
                "input_grad_norm_ratio_leaf": round(
                    float(leaf["input_grad"].norm() / ref["input_grad"].norm()), 4
                ),
                "input_grad_err_nonleaf": _max_err([inner["input_grad"]], [ref["input_grad"]]),
                "param_grad_err": _max_err(leaf["param_grads"], ref["param_grads"]),
                "bn_updates_per_step": ", ".join(map(str, leaf["bn_counts"])),
                "bn_running_stats_err": _max_err(leaf["running"], ref["running"]),
                "leaf_input_storage_freed_in_forward": leaf["freed"],
                "leaf_input_changed_by_step": _max_err([leaf["input_after"]], [x]),
                "input_readable_before_backward": input_readable(kind),
            }
        )
    return rows


def dropout_rows(memcnn, dropout=0.3, channels=8, count=3, batch=4, size=8):
    """float64 with dropout in F and G: errors against plain autograd with the same seed."""
    blocks = make_blocks(channels, count, dropout, torch.float64)
    x = torch.randn(batch, channels, size, size, dtype=torch.float64)
    weight = torch.randn_like(x)
    ref = one_step(PLAIN, blocks, x, weight, memcnn, leaf=False)
    rows = []
    for kind in (OURS, MEMCNN, MEMCNN_RNG):
        inner = one_step(kind, blocks, x, weight, memcnn, leaf=False)
        leaf = one_step(kind, blocks, x, weight, memcnn, leaf=True)
        param_err = _max_err(inner["param_grads"], ref["param_grads"])
        input_err = _max_err([inner["input_grad"]], [ref["input_grad"]])
        rows.append(
            {
                "section": f"dropout {dropout} inside F and G (float64, {count} blocks, "
                f"{channels} channels, batch {batch}, {size}x{size}, non-leaf input)",
                "implementation": kind,
                "output_err": _max_err([inner["output"]], [ref["output"]]),
                "input_grad_err": input_err,
                "input_grad_rel_err": input_err / _max_abs([ref["input_grad"]]),
                "param_grad_err": param_err,
                "param_grad_rel_err": param_err / _max_abs(ref["param_grads"]),
                "leaf_input_changed_by_step": _max_err([leaf["input_after"]], [x]),
            }
        )
    return rows


def _compile_attempt(kind: str, mode: str, dropout: float, memcnn) -> dict[str, Any]:
    import torch._inductor.config as inductor_config

    blocks = make_blocks(4, 2, dropout, torch.float32)
    x = torch.randn(2, 4, 4, 4)
    ref = one_step(PLAIN, blocks, x, torch.ones_like(x), memcnn, leaf=False)
    blocks = copy.deepcopy(blocks)
    chain = build_chain(kind, blocks, memcnn)
    torch._dynamo.reset()
    start = time.perf_counter()
    row: dict[str, Any] = {"implementation": kind, "mode": mode, "dropout": dropout}
    try:
        trace = mode.endswith("trace_autograd_ops")
        # fallback_random: compiled dropout draws eager's masks, so gradients are comparable
        with (
            torch._dynamo.config.patch(trace_autograd_ops=trace),
            inductor_config.patch(fallback_random=True),
        ):
            compiled = torch.compile(chain, fullgraph=mode != "default")
            torch.manual_seed(1)
            compiled(x.clone().requires_grad_() * 1).sum().backward()
        grads = [p.grad for b in blocks for p in b.parameters()]
        row |= {"runs": True, "error": "", "param_grad_err": _max_err(grads, ref["param_grads"])}
    except Exception as error:  # a peer's failure is a measurement, whatever its type
        row |= {"runs": False, "error": f"{type(error).__name__}: {str(error).splitlines()[0]}"}
    finally:
        torch._dynamo.reset()
    row["seconds"] = round(time.perf_counter() - start, 1)
    row["error"] = row["error"][:110]
    return row


def compile_rows(memcnn, quick: bool) -> list[dict[str, Any]]:
    """``torch.compile`` forward + backward of a 2-block chain (float32, 4 channels, 4x4)."""
    rows = []
    for dropout in (0.0,) if quick else (0.0, 0.3):
        for mode in COMPILE_MODES:
            for kind in (OURS, MEMCNN):
                row = _compile_attempt(kind, mode, dropout, memcnn)
                rows.append({"section": "torch.compile, forward + backward (inductor)", **row})
    return rows


def _model(kind: str, blocks, channels: int, memcnn) -> nn.Module:
    torch.manual_seed(0)
    stem = nn.Conv2d(3, channels, 3, padding=1, bias=False)
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))
    return nn.Sequential(stem, build_chain(kind, copy.deepcopy(blocks), memcnn), head)


def interleaved_seconds(models: dict[str, nn.Module], x, y, repeats: int) -> dict[str, float]:
    """Median forward + backward wall time of each model, timed in turns (one step of each
    per round, after a warm-up round) so changes in the machine's load hit all alike."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for round_ in range(repeats + 1):
        for name, model in models.items():
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            nn.functional.cross_entropy(model(x), y).backward()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def cost_rows(memcnn, quick: bool, channels=32, count=4, batch=16, size=16):
    """Meter figures of one SGD-free training step and median seconds per step, float32."""
    blocks = make_blocks(channels, count, 0.0, torch.float32)
    torch.manual_seed(2)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    kinds = (PLAIN, OURS, MEMCNN)
    models = {kind: _model(kind, blocks, channels, memcnn) for kind in kinds}
    seconds = interleaved_seconds(models, x, y, 3 if quick else 25)
    rows, base = [], None
    for kind in kinds:
        report = measure(_model(kind, blocks, channels, memcnn), (x, y))
        base = base or (report.saved_activations, seconds[kind])
        rows.append(
            {
                "section": f"cost of one training step (float32, conv stem, {count} blocks of "
                f"{channels} channels, head; batch {batch}, {size}x{size}; meter measure)",
                "implementation": kind,
                "saved_activations_kib": round(report.saved_activations / 1024, 1),
                "saved_vs_plain": round(report.saved_activations / base[0], 3),
                "peak_kib": round(report.peak / 1024, 1),
                "peak_phase": report.peak_phase,
                "saved_at_peak_kib": round(report.peak_breakdown["saved_activations"] / 1024, 1),
                "temporaries_at_peak_kib": round(report.peak_breakdown["temporaries"] / 1024, 1),
                "seconds_per_step": round(seconds[kind], 4),
                "time_vs_plain": round(seconds[kind] / base[1], 2),
            }
        )
    return rows


@register_benchmark(
    "reversible-peers",
    "smallfoot RevSequence vs MemCNN's InvertibleModuleWrapper(AdditiveCoupling): exactness, "
    "BN statistics, dropout, torch.compile, memory and time",
)
def run_reversible_peers_bench(quick: bool, out_dir: Path) -> BenchResult:
    """Every section of the module docstring; needs ``memcnn`` importable (``ConfigError``)."""
    memcnn = import_memcnn()
    with warnings.catch_warnings():
        # memcnn uses the deprecated torch.cuda.amp decorators and TypedStorage
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        rows = exactness_rows(memcnn) + dropout_rows(memcnn)
        rows += compile_rows(memcnn, quick) + cost_rows(memcnn, quick)
    notes = (
        f"MemCNN {memcnn.__version__} was installed in a separate virtual environment beside "
        f"torch {torch.__version__} (pip install -c constraints.txt memcnn, then this project "
        "editable) and the benchmark run with that environment's console script, "
        "<venv>/bin/smallfoot bench reversible-peers. Both engines get "
        "copies of the same seeded RevBlocks: MemCNN wraps AdditiveCoupling(block.f, block.g) "
        "in InvertibleModuleWrapper with its defaults (keep_input=False, "
        "preserve_rng_state=False unless named), one wrapper per block. Errors are max "
        "absolute differences from plain autograd on the same weights after one forward + "
        "backward of sum(output * w); rel_err divides by the largest reference value. "
        "input_grad_norm_ratio_leaf 2.0 means the input gradient is doubled. "
        "leaf_input_changed_by_step: how far the caller's input tensor differs from its "
        "value before the step (MemCNN frees its storage in forward and writes its "
        "reconstruction back in backward). input_readable_before_backward: reading that "
        "tensor between forward and backward, tried in a subprocess. bn_updates_per_step: "
        "num_batches_tracked of every BN after one step from 0 (1 is right). torch.compile: "
        "default backend on CPU; 'fullgraph+trace_autograd_ops' sets "
        "torch._dynamo.config.trace_autograd_ops=True, which smallfoot's fullgraph support "
        "needs; param_grad_err there is against eager plain autograd (float32, inductor's "
        "fallback_random so compiled dropout draws eager's masks); seconds include "
        "compilation and are shorter when inductor's on-disk cache is warm. Cost rows: "
        "smallfoot.memory.measure of one step (cross-entropy, no optimizer), with the saved "
        "activations and temporaries live at the peak, and the median forward+backward wall "
        "time of 25 steps after a warm-up, the three models timed in turns."
    )
    return BenchResult(rows=rows, notes=notes)


@register_claims("reversible-peers")
def reversible_peers_claims(rows: list[dict[str, Any]], command: str) -> list[Claim]:
    """``reversible.exact_gradients``: smallfoot's reversible blocks give plain backprop's
    gradients (largest relative error, with dropout inside the blocks, float64)."""
    errors = [max(r["input_grad_rel_err"], r["param_grad_rel_err"]) for r in rows
              if str(r.get("section")).startswith("dropout")
              and r.get("implementation") == "smallfoot RevSequence"]  # fmt: skip
    if not errors:
        return []
    return [Claim(
        "reversible.exact_gradients",
        "Reversible blocks that recompute their input from their output give the gradients of "
        "plain backprop, dropout included (float64, relative error; met below 1e-12).",
        "section 3: reversible blocks recompute activations instead of storing them",
        max(errors), "<=", 1e-12, seeds=1, command=command,
    )]  # fmt: skip
