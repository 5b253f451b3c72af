"""The ``smallfoot`` command line: sub-commands call library functions, nothing else."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

import smallfoot
from smallfoot.errors import ConfigError, SmallfootError, TrainingInterrupted

app = typer.Typer(
    help="smallfoot: train deep networks in a fraction of the memory, and measure what it costs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()


def _version(value: bool) -> None:
    if value:
        console.print(f"smallfoot {smallfoot.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
):
    """smallfoot: memory-efficient training and an honest memory meter."""


def parse_value(text: str) -> Any:
    """A CLI value: int, float, bool, comma-separated list of those, or the string itself."""
    if "," in text:
        return [parse_value(part) for part in text.split(",") if part != ""]
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_key_values(items: list[str], what: str) -> dict[str, Any]:
    """``["a=1", "b=x,y"]`` -> ``{"a": 1, "b": ["x", "y"]}``; malformed items raise ``ConfigError``."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{what} {item!r} must look like KEY=VALUE")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = parse_value(value.strip())
    return out


def parse_extra_flags(args: list[str]) -> dict[str, Any]:
    """Method options given as extra flags: ``--inr 0.3 --kernel=2 --flag`` -> dict (strings kept)."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"unexpected argument {arg!r}; method options look like --name VALUE")
        name = arg[2:]
        if "=" in name:
            name, value = name.split("=", 1)
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            value = args[i + 1]
            i += 2
        else:
            value = "true"
            i += 1
        out[name.replace("-", "_")] = value
    return out


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    ctx: typer.Context,
    config: Path | None = typer.Option(
        None, "--config", help="TOML run configuration; flags override it."
    ),
    resume: Path | None = typer.Option(
        None, "--resume", help="Continue the run in this directory from its checkpoint."
    ),
    dataset: str | None = typer.Option(None, help="Dataset name (see `smallfoot datasets`)."),
    model: str | None = typer.Option(None, help="Model name (see `smallfoot models`)."),
    method: str | None = typer.Option(
        None, help="Method name (see `smallfoot methods`); its options follow as --flags."
    ),
    epochs: int | None = typer.Option(None, help="Epochs."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Mini-batch size."),
    lr: float | None = typer.Option(None, help="Peak learning rate."),
    optimizer: str | None = typer.Option(None, help="sgd or adamw."),
    schedule: str | None = typer.Option(None, help="constant, cosine or multistep."),
    momentum: float | None = typer.Option(None, help="SGD momentum."),
    weight_decay: float | None = typer.Option(None, "--weight-decay", help="Weight decay."),
    seed: int | None = typer.Option(None, help="Seed of every generator."),
    augment: bool | None = typer.Option(
        None, "--augment/--no-augment", help="Random crop (+ flip for colour)."
    ),
    data_root: str | None = typer.Option(
        None, "--data-root", help="Directory with the dataset files."
    ),
    train_limit: int | None = typer.Option(
        None, "--train-limit", help="Train on this many samples."
    ),
    test_limit: int | None = typer.Option(
        None, "--test-limit", help="Evaluate on this many samples."
    ),
    label_noise: float | None = typer.Option(
        None, "--label-noise", help="Fraction of training labels made wrong."
    ),
    filter_spec: str | None = typer.Option(
        None, "--filter", help="Filter the training set first, e.g. k=42."
    ),
    loss: str | None = typer.Option(None, help="softmax-ce, exp-ga, pow3-ga or linear-mse."),
    target_values: str | None = typer.Option(
        None, "--target-values", help="Loss targets for (other, true) class, e.g. 0,16."
    ),
    ga_alpha: float | None = typer.Option(
        None, "--ga-alpha", help="Gradient-amplifying loss alpha."
    ),
    ga_beta: float | None = typer.Option(None, "--ga-beta", help="Gradient-amplifying loss beta."),
    init: str | None = typer.Option(
        None, "--init", help="Initialise the model from this state-dict file."
    ),
    model_opt: list[str] = typer.Option(
        [], "--model-opt", help="Model option KEY=VALUE (repeatable)."
    ),
    data_opt: list[str] = typer.Option(
        [], "--data-opt", help="Dataset option KEY=VALUE, e.g. pad_to=32 (repeatable)."
    ),
    device: str | None = typer.Option(None, help="cpu, cuda or auto."),
    out_dir: str | None = typer.Option(
        None, "--out-dir", help="Parent directory of run directories."
    ),
    run_name: str | None = typer.Option(None, "--run-name", help="Name of the run directory."),
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress", help="Show a progress bar."
    ),
    measure_memory: bool | None = typer.Option(
        None, "--memory/--no-memory", help="Measure a training step's memory."
    ),
):
    """Train a model with a method; writes a run directory and prints a summary."""
    from smallfoot.config import RunConfig, apply_overrides, load_config
    from smallfoot.train import run_training

    if resume is not None:
        if config is not None or ctx.args:
            raise ConfigError("--resume takes the run's own config.toml; drop the other options")
        summary = run_training(RunConfig(), resume_dir=resume)
        print_summary(summary)
        return
    base = load_config(config) if config is not None else RunConfig()
    flags = {
        "dataset": dataset,
        "model": model,
        "method": method,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "optimizer": optimizer,
        "schedule": schedule,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "seed": seed,
        "augment": augment,
        "data_root": data_root,
        "train_limit": train_limit,
        "test_limit": test_limit,
        "label_noise": label_noise,
        "filter": filter_spec,
        "loss": loss,
        "init": init,
        "device": device,
        "out_dir": out_dir,
        "run_name": run_name,
        "progress": progress,
        "measure_memory": measure_memory,
    }
    overrides: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    loss_options = {
        "target_values": parse_value(target_values) if target_values else None,
        "alpha": ga_alpha,
        "beta": ga_beta,
    }
    overrides["loss_options"] = {k: v for k, v in loss_options.items() if v is not None}
    overrides["model_options"] = parse_key_values(model_opt, "--model-opt")
    overrides["data_options"] = parse_key_values(data_opt, "--data-opt")
    method_flags = parse_extra_flags(ctx.args)
    if "method" in overrides and overrides["method"] != base.method:
        base.method_options = {}  # options of the file's method do not apply to another one
    overrides["method_options"] = method_flags
    run_config = apply_overrides(base, overrides)
    print_summary(run_training(run_config))


def print_summary(summary: dict[str, Any]) -> None:
    """Print a run summary as a table."""
    table = Table(title="smallfoot run summary", show_header=False)
    memory = summary.get("memory") or {}
    rows = [
        (
            "dataset / model / method",
            f"{summary['dataset']} / {summary['model']} / {summary['method']}",
        ),
        ("epochs", str(summary["epochs"])),
        ("train accuracy", _pct(summary.get("train_accuracy"))),
        ("test accuracy", _pct(summary.get("test_accuracy"))),
        (
            "test loss",
            f"{summary['test_loss']:.4f}" if summary.get("test_loss") is not None else "-",
        ),
        ("wall time", f"{summary['seconds']:.1f} s"),
        ("parameters", f"{summary['parameters']:,}"),
    ]
    if memory.get("peak") is not None:
        rows += [
            (
                "peak memory (one step)",
                f"{_mib(memory.get('peak'))} ({memory.get('peak_phase', '?')})",
            ),
            ("saved activations", _mib(memory.get("saved_activations"))),
        ]
    rows.append(("run directory", summary["run_dir"]))
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def _pct(value) -> str:
    return f"{100 * value:.2f}%" if value is not None else "-"


def _mib(value) -> str:
    return f"{value / 2**20:.2f} MiB" if value is not None else "-"


@app.command()
def datasets(
    data_root: str | None = typer.Option(
        None, "--data-root", help="Where to look for (or download) files."
    ),
    download: str | None = typer.Option(
        None, "--download", help="Download this dataset into --data-root (needs a network)."
    ),
):
    """List the datasets, and whether and where each is available locally."""
    from smallfoot.data import list_datasets
    from smallfoot.errors import DatasetError

    if download is not None:
        from smallfoot.data.download import download_dataset

        if data_root is None:
            raise ConfigError("--download needs --data-root DIR")
        for path in download_dataset(download, data_root):
            console.print(f"verified {path}")
        return
    table = Table(title="datasets")
    for column in ("name", "description", "available"):
        table.add_column(column)
    root = Path(data_root) if data_root else None
    for info in list_datasets():
        try:
            where = f"[green]yes[/green]: {info.locate(root)}" if info.locate else "yes"
        except DatasetError as exc:
            where = f"[red]no[/red]: {exc}"
        table.add_row(info.name, info.description, where)
    console.print(table)


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``"3x32x32"`` -> ``(3, 32, 32)``; raises ``ConfigError`` on anything else."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or any(s < 1 for s in shape):
        raise ConfigError(f"input shape {text!r} must look like CxHxW (e.g. 3x32x32) or D")
    return shape


@app.command()
def models(
    input_shape: str = typer.Option(
        "3x32x32", "--input", help="Input shape CxHxW for the parameter counts."
    ),
    classes: int = typer.Option(10, "--classes", help="Number of classes."),
):
    """List the models with their parameter counts at the given input shape."""
    import torch

    from smallfoot.models import build_model, list_models, parameter_count

    shape = parse_input_shape(input_shape)
    table = Table(title=f"models (parameters at input {input_shape}, {classes} classes)")
    for column in ("name", "parameters", "description"):
        table.add_column(column)
    for info in list_models():
        try:
            with torch.device("meta"):
                count = f"{parameter_count(build_model(info.name, shape, classes)):,}"
        except SmallfootError as exc:
            count = f"n/a ({exc})"
        table.add_row(info.name, count, info.description)
    console.print(table)


@app.command()
def methods():
    """List the training methods, their capability flags and their options."""
    from smallfoot.methods import list_methods, option_fields

    table = Table(title="methods")
    for column in ("name", "description", "flags", "options (default)"):
        table.add_column(column)
    for cls in list_methods():
        flags = [f for f in ("custom_backward", "changes_optimizer", "staged") if getattr(cls, f)]
        options = ", ".join(
            f"--{n.rstrip('_').replace('_', '-')} ({d})"
            for n, _, d, _ in option_fields(cls.Options)
        )
        table.add_row(cls.name, cls.description, " ".join(flags), options or "-")
    console.print(table)


@app.command()
def compare(
    config: Path | None = typer.Option(
        None, "--config", help="TOML run configuration shared by every method."
    ),
    dataset: str | None = typer.Option(None, help="Dataset name."),
    model: str | None = typer.Option(None, help="Model name."),
    epochs: int | None = typer.Option(None, help="Epochs per method."),
    train_limit: int | None = typer.Option(
        None, "--train-limit", help="Train on this many samples."
    ),
    methods_: str | None = typer.Option(
        None, "--methods", help="Comma-separated methods (default: all)."
    ),
    out_dir: str = typer.Option(
        "runs/compare", "--out-dir", help="Where the runs, compare.json and the plot go."
    ),
    plot: Path | None = typer.Option(
        None, "--plot", help="Save the accuracy-vs-memory plot here (PNG)."
    ),
):
    """Train one dataset/model with the baseline and every method; print one table, save one plot."""
    from smallfoot.compare import compare_methods, plot_comparison
    from smallfoot.config import RunConfig, apply_overrides, load_config

    base = load_config(config) if config is not None else RunConfig()
    flags = {
        "dataset": dataset,
        "model": model,
        "epochs": epochs,
        "train_limit": train_limit,
        "progress": False,
    }
    base = apply_overrides(base, {k: v for k, v in flags.items() if v is not None})
    rows = compare_methods(
        base,
        methods_.split(",") if methods_ else None,
        out_dir,
        on_start=_compare_started,
        on_row=_compare_finished,
    )
    print_comparison(rows, f"{base.dataset} / {base.model}: methods compared")
    console.print(f"rows: {Path(out_dir) / 'compare.json'}")
    if plot is not None:
        console.print(f"plot: {plot_comparison(rows, plot)}")
    failed = [row["method"] for row in rows if "error" in row]
    if failed:
        print(
            f"error: {len(failed)} of {len(rows)} methods failed: {', '.join(failed)}",
            file=sys.stderr,
        )
        raise typer.Exit(1)


_compare_clock: dict[str, float] = {}


def _compare_started(index: int, total: int, name: str, config, notes: list[str]) -> None:
    import time

    _compare_clock.setdefault("start", time.perf_counter())
    adapted = f"; adapted: {'; '.join(notes)}" if notes else ""
    console.print(
        f"[bold][{index + 1}/{total}][/bold] {name}: {config.model}, {config.epochs} epochs"
        f"{adapted}",
        soft_wrap=True,
    )


def _compare_finished(index: int, total: int, row: dict[str, Any]) -> None:
    import time

    elapsed = time.perf_counter() - _compare_clock.get("start", time.perf_counter())
    left = elapsed / (index + 1) * (total - index - 1)
    if "error" in row:
        outcome = f"[red]failed[/red]: {row['error']}"
    else:
        outcome = (
            f"test {_pct(row['test_accuracy'])}, peak {_mib(row['peak'])}, {row['seconds']:.1f} s"
        )
    console.print(
        f"      {row['method']} done: {outcome}  [dim]({index + 1}/{total} methods, "
        f"{elapsed:.0f} s elapsed, about {left:.0f} s left)[/dim]",
        soft_wrap=True,
    )


def print_comparison(rows: list[dict[str, Any]], title: str) -> None:
    """Print ``compare`` rows as one table (what each row trained, its figures and ratios to
    baseline), then each failed method's full error and each adaptation on a line of its own."""
    table = Table(title=f"{title} (memory from smallfoot.memory)")
    table.add_column("method", no_wrap=True)
    table.add_column("model", no_wrap=True)
    table.add_column("epochs", justify="right")
    for column in ("test acc", "peak", "x base", "saved act.", "x base", "seconds", "x base"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        if "error" in row:
            table.add_row(row["method"], "-", "-", "[red]failed[/red]", *[""] * 6)
            continue
        stage = f" ({row['stage']})" if row.get("stage") else ""
        table.add_row(
            row["method"] + ("*" if row.get("adapted") else ""),
            row["model"],
            str(row["epochs"]),
            _pct(row["test_accuracy"]),
            _mib(row["peak"]) + stage,
            _ratio(row.get("peak_ratio")),
            _mib(row["saved_activations"]),
            _ratio(row.get("saved_activations_ratio")),
            f"{row['seconds']:.1f}",
            _ratio(row.get("seconds_ratio")),
        )
    console.print(table)
    for row in rows:
        for note in row.get("adapted") or []:
            console.print(f"* {row['method']}: {note}", soft_wrap=True)
    for row in rows:
        if "error" in row:
            console.print(f"[red]{row['method']} failed[/red]: {row['error']}", soft_wrap=True)


def _ratio(value) -> str:
    return f"{value:.2f}" if value is not None else "-"


@app.command("filter")
def filter_command(
    dataset: str = typer.Option(..., help="Dataset name (see `smallfoot datasets`)."),
    k: str = typer.Option("5,10,20,42", "--k", help="Neighbourhood sizes, e.g. 5,10,42."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="k-NN within random mini-batches of this size (default: exact)."
    ),
    split: str = typer.Option("train", help="Dataset split."),
    limit: int | None = typer.Option(None, "--limit", help="Use this many samples (seeded)."),
    seed: int = typer.Option(0, help="Seed of the subset and of the mini-batch split."),
    data_root: str | None = typer.Option(None, "--data-root", help="Dataset directory."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object keyed by k."),
):
    """Report the k-redundancy (fraction a k-filter removes) of a dataset for several k."""
    import time

    from smallfoot.data import load_dataset
    from smallfoot.data.filtering import k_redundancy

    values = parse_value(k)
    ks = values if isinstance(values, list) else [values]
    if not ks or not all(isinstance(v, int) and v >= 1 for v in ks):
        raise ConfigError(f"--k {k!r} must be positive integers separated by commas, e.g. 5,10,42")
    data = load_dataset(dataset, split, data_root, limit=limit, seed=seed)
    start = time.perf_counter()
    redundancy = k_redundancy(data.x, data.y, ks, batch_size=batch_size, seed=seed)
    seconds = time.perf_counter() - start
    report = {
        str(key): {
            "redundancy": value,
            "kept": len(data) - round(value * len(data)),
            "removed": round(value * len(data)),
            "total": len(data),
        }
        for key, value in redundancy.items()
    }
    if as_json:
        print_json(report)
        return
    search = f"mini-batches of {batch_size}" if batch_size else "exact"
    table = Table(title=f"k-redundancy of {dataset} ({split}, {len(data)} samples, {search} k-NN)")
    for column in ("k", "redundancy", "kept", "removed"):
        table.add_column(column, justify="right")
    for key, row in report.items():
        table.add_row(key, f"{100 * row['redundancy']:.1f}%", str(row["kept"]), str(row["removed"]))
    console.print(table)
    console.print(f"one k-NN search for all k: {seconds:.1f} s")


@app.command()
def fit(
    dataset: str = typer.Option(..., help="Dataset name (see `smallfoot datasets`)."),
    widths: str = typer.Option("784,392", help="Hidden layer widths, e.g. 784,392."),
    targets: str = typer.Option(
        "deterministic",
        help="random, platonic-pca, sorted-pca, deterministic, elm, or one per layer: a,b.",
    ),
    activation: str = typer.Option("relu", help="relu, tanh, celu, sigmoid or identity."),
    alpha: float = typer.Option(1.0, help="Target scale alpha in T = alpha [Z | beta Y] P."),
    beta: float = typer.Option(1e4, help="Weight beta of the labels."),
    tries: int = typer.Option(1, help="Random projections per layer (lowest LSD kept)."),
    solver: str = typer.Option("ridge", help="ridge, pinv or lstsq."),
    ridge: float = typer.Option(1e3, help="L2 penalty of the ridge solver."),
    tol: float | None = typer.Option(None, help="Absolute tolerance of pinv."),
    ema: float | None = typer.Option(None, help="lambda_EMA of sample re-weighting, e.g. 0.2."),
    chunk: int | None = typer.Option(10000, help="Rows per normal-equation step (ridge)."),
    dtype: str = typer.Option("float32", help="float32 or float64."),
    seed: int = typer.Option(0, help="Seed of random projections and subsets."),
    train_limit: int | None = typer.Option(None, "--train-limit", help="Fit on this many."),
    test_limit: int | None = typer.Option(None, "--test-limit", help="Test on this many."),
    data_root: str | None = typer.Option(None, "--data-root", help="Dataset directory."),
    data_opt: list[str] = typer.Option([], "--data-opt", help="Dataset option KEY=VALUE."),
    out_dir: str = typer.Option("runs", "--out-dir", help="Parent of run directories."),
    run_name: str | None = typer.Option(None, "--run-name", help="Run directory name."),
):
    """Fit an MLP in closed form (Platonic projections, no gradients); writes a run directory
    whose model.pt initialises `smallfoot train --model mlp --init`."""
    from smallfoot.config import RunConfig
    from smallfoot.train import run_training

    layer_widths = parse_value(widths)
    layer_widths = layer_widths if isinstance(layer_widths, list) else [layer_widths]
    names = targets.split(",")
    method_options = {
        "targets": names[0] if len(names) == 1 else "deterministic",
        "layers": names if len(names) > 1 else [],
        "activation": activation,
        "alpha": alpha,
        "beta": beta,
        "tries": tries,
        "solver": solver,
        "ridge": ridge,
        "tol": tol,
        "ema": ema,
        "chunk": chunk,
        "dtype": dtype,
    }
    config = RunConfig(
        dataset=dataset,
        model="mlp",
        method="closedform",
        seed=seed,
        train_limit=train_limit,
        test_limit=test_limit,
        data_root=data_root,
        data_options=parse_key_values(data_opt, "--data-opt"),
        out_dir=out_dir,
        run_name=run_name,
        model_options={"widths": layer_widths},
        method_options={k: v for k, v in method_options.items() if v is not None},
        progress=False,
    )
    summary = run_training(config)
    table = Table(title=f"closed-form fit of {dataset} (per layer)")
    for column in ("layer", "width", "weights from", "LSD", "train error", "seconds"):
        table.add_column(column, justify="right")
    for layer in summary["fit"]["layers"]:
        table.add_row(
            str(layer["index"]),
            str(layer["width"]),
            layer["projection"],
            f"{layer['lsd']:.4g}",
            f"{layer['train_error']:.4g}",
            f"{layer['seconds']:.2f}",
        )
    console.print(table)
    print_summary(summary)
    memory = summary["memory"]
    console.print(f"process peak memory: {_mib(memory['process_peak'])} ({memory['source']})")
    console.print(f"fitted weights: {summary['model_file']}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def memory(
    ctx: typer.Context,
    model: str = typer.Option(..., "--model", help="Model name (see `smallfoot models`)."),
    input_shape: str = typer.Option("3x32x32", "--input", help="Input shape CxHxW or D."),
    batch: int = typer.Option(32, "--batch", help="Batch size."),
    method: str = typer.Option("baseline", "--method", help="Method; its options as flags."),
    estimate: bool = typer.Option(False, "--estimate", help="Fake tensors: allocate nothing."),
    optimizer: str = typer.Option("sgd", "--optimizer", help="sgd or adamw."),
    classes: int = typer.Option(10, "--classes", help="Number of classes."),
    model_opt: list[str] = typer.Option([], "--model-opt", help="Model option KEY=VALUE."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    plot: Path | None = typer.Option(None, "--plot", help="Save the timeline plot (PNG)."),
    timeline: Path | None = typer.Option(None, "--timeline", help="Save the timeline JSON."),
):
    """Measure (or --estimate) the memory of one training step, by category."""
    import time

    from smallfoot.memory import plot_timeline, save_timeline
    from smallfoot.memory.configured import configured_step

    start = time.perf_counter()
    report = configured_step(
        model,
        parse_input_shape(input_shape),
        batch,
        method=method,
        method_options=parse_extra_flags(ctx.args),
        model_options=parse_key_values(model_opt, "--model-opt"),
        optimizer=optimizer,
        classes=classes,
        fake=estimate,
    )
    seconds = time.perf_counter() - start
    if plot is not None:
        plot_timeline(report, plot, title=f"{model} / {method}, batch {batch}, {input_shape}")
    if timeline is not None:
        save_timeline(report, timeline)
    data = {"model": model, "method": method, **report.to_dict(), "seconds": round(seconds, 2)}
    if as_json:
        print_json(data)
        return
    kind = "estimated on fake tensors" if estimate else "measured"
    table = Table(title=f"{model} / {method}: one training step, batch {batch}, {kind}")
    for column, justify in (("category", "left"), ("bytes", "right"), ("MiB", "right")):
        table.add_column(column, justify=justify)
    for key in (
        "parameters", "buffers", "inputs", "gradients", "optimizer_state",
        "saved_activations", "temporaries", "peak",
    ):  # fmt: skip
        label = f"peak ({data['peak_phase']})" if key == "peak" else key.replace("_", " ")
        table.add_row(label, f"{data[key]:,}", f"{data[key] / 2**20:.2f}")
    console.print(table)
    pixel = data["per_pixel"]
    console.print(
        f"per input pixel: saved activations {pixel['saved_activations']:.1f} B, "
        f"activation gradients {pixel['activation_gradients']:.1f} B "
        f"({pixel['pixels']:,} pixels = batch x H x W); {seconds:.2f} s"
    )


@app.command()
def bench(
    name: str | None = typer.Argument(None, help="Benchmark name; omit to list them."),
    quick: bool = typer.Option(False, "--quick", help="The minutes-long version."),
    results: Path = typer.Option(Path("results"), "--results", help="Results directory."),
    claims_only: bool = typer.Option(False, "--claims-only", help="Recompute the claims only."),
):
    """Run a benchmark: writes results/NAME.json, NAME.md and plots (quick: NAME-quick.*)."""
    from smallfoot.bench import list_benchmarks, recompute_claims, run_benchmark

    if name is None:
        table = Table(title="benchmarks")
        table.add_column("name")
        table.add_column("description")
        for info in list_benchmarks():
            table.add_row(info.name, info.description)
        console.print(table)
        return
    if claims_only:
        document = recompute_claims(name, quick=quick, results_dir=results)
        met = sum(claim["met"] for claim in document["claims"])
        console.print(f"{len(document['claims'])} claims ({met} met) from the committed rows")
        return
    document = run_benchmark(name, quick=quick, results_dir=results)
    stem = f"{name}-quick" if quick else name
    console.print(f"{len(document['rows'])} rows in {document['seconds']} s: {results / stem}.md")


@app.command()
def claims(
    results: Path = typer.Option(Path("results"), "--results", help="Results directory."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """Every claim of every committed benchmark result (results/*.json): met or not."""
    from smallfoot.claims import claims_summary, collect_claims

    collected = collect_claims(results)
    summary = claims_summary(collected)
    if as_json:
        print_json(summary)
        return
    table = Table(title=f"claims in {results}/*.json")
    for column in ("id", "claim", "paper", "measured", "target", "met"):
        table.add_column(column, overflow="fold")
    for item in collected:
        table.add_row(*item.claim.display().values())
    console.print(table)
    console.print(f"{summary['met']} met, {summary['not_met']} not met")


def main() -> None:
    """Entry point: run the app; user errors print one line and exit with status 2."""
    try:
        app()
    except TrainingInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        sys.exit(130)
    except SmallfootError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def print_json(obj: Any) -> None:
    """Print ``obj`` as JSON on standard output (no rich markup)."""
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


if __name__ == "__main__":
    main()
